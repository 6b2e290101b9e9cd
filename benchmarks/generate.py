"""Generation benchmark: greedy cached decoding, plain vs FourierFT unmerged/merged.

A KerasHub Llama causal LM (random weights, hidden 512 by default) generates
`--new-tokens` tokens greedily with its KV cache from a prompt of
`--prompt-length` tokens; the plain model, the same model with FourierFT
(n = 1000 on query and value, random coefficients) unmerged, and merged are
timed interleaved. Each model's first call compiles its generate function
and is not timed. The generated tokens of the unmerged and merged models must
agree. Reports tokens per second and the ratios per token.

Usage:
    python benchmarks/generate.py --backend jax [--quick] [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

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
    return np.asarray(model.generate(inputs, stop_token_ids=None)["token_ids"])


def timed(model, inputs):
    start = time.perf_counter()
    generated(model, inputs)
    return time.perf_counter() - start


def build(args, adapter):
    model = llama_causal_lm(
        args.num_layers, args.hidden_dim, args.num_heads, 2 * args.hidden_dim
    )
    if adapter != "plain":
        keras_fourierft.enable_fourierft(model, n_frequency=1000, seed=0)
    if adapter == "merged":
        keras_fourierft.merge_fourierft(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend")
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
    models = {name: build(args, name) for name in ("plain", "unmerged", "merged")}
    tokens = {name: generated(model, inputs) for name, model in models.items()}
    agreement = float(np.mean(tokens["unmerged"] == tokens["merged"]))
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
            "hidden_dim": args.hidden_dim,
            "num_layers": args.num_layers,
            "repeats": repeats,
            "tokens_per_second": {name: new / value for name, value in seconds.items()},
            "unmerged_over_merged": seconds["unmerged"] / seconds["merged"],
            "merged_over_plain": seconds["merged"] / seconds["plain"],
            "spread": {
                name: [min(values) / seconds[name], max(values) / seconds[name]]
                for name, values in samples.items()
            },
            "unmerged_merged_token_agreement": agreement,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
