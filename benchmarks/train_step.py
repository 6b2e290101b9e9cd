"""Training-step benchmark: frozen, Keras LoRA, FourierFT, full fine-tuning.

A KerasHub BERT backbone (random weights; default MiniLM-L6 shapes: 6 layers x
384, 12 heads, batch 32 x 64 tokens) with a 2-class head, adapted on query and
value; or (`--shapes llama`) a Llama-style KerasHub causal LM (random weights,
hidden 2048, 16 heads, MLP 5504, 2 layers, 1 x 256 tokens) with every linear
projection adapted, on a float or (`--quantize int8`) an int8 base. For each method one
compiled training step (`train_on_batch`) is timed; methods run interleaved,
warm-up steps excluded, and the median of repeats is reported. Peak memory is
measured per method in a separate process (RSS on CPU, device peak on GPU).

Prints one JSON object (also written with `--output`), including
`fourierft_over_lora`, the median step-time ratio.

Usage:
    python benchmarks/train_step.py --backend tensorflow
    python benchmarks/train_step.py --backend jax --quick
    python benchmarks/train_step.py --shapes bert-base
    python benchmarks/train_step.py --backend jax --shapes llama --quantize int8
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

METHODS = ("frozen", "lora", "fourierft", "full")
PEFT_METHODS = ("peft_lora", "peft_fourierft")
SHAPES = {
    "minilm": {"num_layers": 6, "hidden_dim": 384, "num_heads": 12, "batch": 32},
    "bert-base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "batch": 32},
    "llama": {
        "num_layers": 2,
        "hidden_dim": 2048,
        "num_heads": 16,
        "intermediate_dim": 5504,
        "batch": 1,
    },
}
SEQUENCE_LENGTHS = {"minilm": 64, "bert-base": 128, "llama": 256}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow")
    )
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="minilm")
    parser.add_argument("--sequence-length", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n-frequency", type=int, default=1000)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout rate of both BERT implementations (default: BERT's 0.1)",
    )
    parser.add_argument(
        "--with-peft",
        action="store_true",
        help="torch backend: also time HF PEFT LoRA and FourierFT (needs "
        "transformers and peft) in the same interleaved run.",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8", "int4", "float8"],
        help="quantize the base model before adapting (not with full)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--memory-of", choices=METHODS + PEFT_METHODS, help=argparse.SUPPRESS
    )
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.with_peft:
        if args.backend != "torch":
            parser.error("--with-peft needs --backend torch")
        args.methods = list(args.methods) + list(PEFT_METHODS)
    if args.quick:
        args.repeats, args.steps, args.warmup = 3, 2, 2
    shape = SHAPES[args.shapes]
    args.batch = args.batch or shape["batch"]
    args.sequence_length = args.sequence_length or SEQUENCE_LENGTHS[args.shapes]
    if args.quantize:
        args.methods = [method for method in args.methods if method != "full"]
    if args.shapes == "llama":
        # A causal LM has no weights outside its backbone: frozen, nothing
        # would train (and no backward pass would run).
        args.methods = [method for method in args.methods if method != "frozen"]
    return args


def inputs(args):
    from common import llama_inputs
    from common import token_inputs

    if args.shapes == "llama":
        return llama_inputs(args.batch, args.sequence_length)
    return token_inputs(args.batch, args.sequence_length)


def base_model(args):
    """The model to adapt and its target layer names."""
    from common import LLAMA_TARGETS
    from common import llama_causal_lm
    from common import minilm_classifier

    shape = SHAPES[args.shapes]
    if args.shapes == "llama":
        model = llama_causal_lm(
            shape["num_layers"],
            shape["hidden_dim"],
            shape["num_heads"],
            shape["intermediate_dim"],
        )
        targets = list(LLAMA_TARGETS)
    else:
        model = minilm_classifier(
            shape["num_layers"], shape["hidden_dim"], shape["num_heads"], args.dropout
        )
        targets = ["query", "value"]
    if args.quantize:
        model.quantize(args.quantize)
    return model, targets


def build(method, args):
    """Returns `(step, trainable_params)`; `step()` runs one training step."""
    if method in PEFT_METHODS:
        return build_peft(method, args)
    import keras
    import numpy as np

    import keras_fourierft

    model, targets = base_model(args)
    backbone = model.backbone
    if method == "frozen":
        backbone.trainable = False
    elif method == "lora":
        backbone.enable_lora(args.lora_rank, target_layer_names=targets)
    elif method == "fourierft":
        keras_fourierft.enable_fourierft(
            model, n_frequency=args.n_frequency, target_layer_names=targets
        )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = inputs(args)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)

    def step():
        model.train_on_batch(x, y)
        keras.ops.convert_to_numpy(model.trainable_weights[0])

    return step, trainable


def build_peft(method, args):
    """HF transformers BERT with PEFT's LoRA or FourierFT, same shapes."""
    import peft
    import torch
    import transformers

    shape = SHAPES[args.shapes]
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=shape["hidden_dim"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=4 * shape["hidden_dim"],
        num_labels=2,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        classifier_dropout=args.dropout,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.BertForSequenceClassification(config)
    if method == "peft_lora":
        adapter = peft.LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_rank,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        )
    else:
        adapter = peft.FourierFTConfig(
            n_frequency=args.n_frequency,
            scaling=150.0,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        )
    model = peft.get_peft_model(model, adapter).to(device)
    model.train()
    x, y = inputs(args)
    batch = {
        "input_ids": torch.as_tensor(x["token_ids"], dtype=torch.long, device=device),
        "token_type_ids": torch.as_tensor(
            x["segment_ids"], dtype=torch.long, device=device
        ),
        "attention_mask": torch.as_tensor(
            x["padding_mask"], dtype=torch.long, device=device
        ),
        "labels": torch.as_tensor(y, dtype=torch.long, device=device),
    }
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step, sum(p.numel() for p in parameters)


def time_steps(step, steps):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000.0


def peak_memory_mb(method, args):
    """Runs one method alone in a fresh process and returns its peak memory."""
    command = [
        sys.executable,
        __file__,
        "--memory-of",
        method,
        "--backend",
        args.backend,
    ]
    command += ["--shapes", args.shapes, "--batch", str(args.batch)]
    command += ["--sequence-length", str(args.sequence_length)]
    command += ["--dropout", str(args.dropout)]
    command += [
        "--n-frequency",
        str(args.n_frequency),
        "--lora-rank",
        str(args.lora_rank),
    ]
    if args.quantize:
        command += ["--quantize", args.quantize]
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_memory_mb"]


def paired_ratio(numerator, denominator):
    """Quartiles of the per-repeat ratios of two interleaved methods.

    Each repeat times both methods back to back, so the ratio of a pair
    cancels the slow drifts of a shared machine that the ratio of two
    medians still carries.
    """
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    median = statistics.median(ratios)
    if len(ratios) < 2:
        return {"median": median, "q1": median, "q3": median}
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"median": median, "q1": q1, "q3": q3}


def device_peak_mb(args):
    """Peak accelerator memory where the backend exposes it, else None."""
    try:
        if args.backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20
        if args.backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "gpu":
                return device.memory_stats()["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001 - memory stats are best effort
        return None
    return None


def peak_rss_mb():
    """This process's peak resident memory (VmHWM; unlike `ru_maxrss` it is
    not inherited from the parent process across fork and exec)."""
    from common import status_mb

    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_only(args):
    step, _ = build(args.memory_of, args)
    for _ in range(3):
        step()
    device = device_peak_mb(args)
    rss = peak_rss_mb()
    print(json.dumps({"peak_memory_mb": device if device is not None else rss}))


def versions(backend):
    import keras
    import keras_hub

    import keras_fourierft

    info = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "keras_fourierft": keras_fourierft.__version__,
    }
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    info[module] = __import__(module).__version__
    if backend == "torch":
        for name in ("transformers", "peft"):
            try:
                info[name] = __import__(name).__version__
            except ImportError:
                pass
    return info


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.memory_of:
        memory_only(args)
        return
    built = {method: build(method, args) for method in args.methods}
    for step, _ in built.values():
        time_steps(step, args.warmup)
    samples = {method: [] for method in args.methods}
    for _ in range(args.repeats):
        for method in args.methods:
            samples[method].append(time_steps(built[method][0], args.steps))
    results = {
        method: {
            "median_step_ms": statistics.median(samples[method]),
            "trainable_params": built[method][1],
        }
        for method in args.methods
    }
    if not args.no_memory:
        for method in args.methods:
            results[method]["peak_memory_mb"] = peak_memory_mb(method, args)
    report = {
        "benchmark": "train_step",
        "backend": args.backend,
        "shapes": args.shapes,
        "quantize": args.quantize,
        "batch": args.batch,
        "sequence_length": args.sequence_length,
        "dropout": args.dropout,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(args.backend),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    for name, (numerator, denominator) in {
        "fourierft_over_lora": ("fourierft", "lora"),
        "fourierft_over_peft_fourierft": ("fourierft", "peft_fourierft"),
        "peft_fourierft_over_peft_lora": ("peft_fourierft", "peft_lora"),
        # The base models differ (KerasHub vs transformers BERT): this is the
        # framework's share of the FourierFT-vs-PEFT ratio.
        "lora_over_peft_lora": ("lora", "peft_lora"),
    }.items():
        if numerator in results and denominator in results:
            report[name] = (
                results[numerator]["median_step_ms"]
                / results[denominator]["median_step_ms"]
            )
            report[f"{name}_paired"] = paired_ratio(
                samples[numerator], samples[denominator]
            )
    if "peak_memory_mb" in results.get("lora", {}) and "fourierft" in results:
        report["fourierft_memory_over_lora"] = (
            results["fourierft"]["peak_memory_mb"] / results["lora"]["peak_memory_mb"]
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
