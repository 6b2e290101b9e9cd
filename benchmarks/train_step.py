"""Training-step benchmark: frozen, Keras LoRA, FourierFT, full fine-tuning.

A KerasHub BERT backbone (random weights; default MiniLM-L6 shapes: 6 layers x
384, 12 heads, batch 32 x 64 tokens) with a 2-class head. For each method one
compiled training step (`train_on_batch`) is timed; methods run interleaved,
warm-up steps excluded, and the median of repeats is reported. Peak memory is
measured per method in a separate process (RSS on CPU, device peak on GPU).

Prints one JSON object (also written with `--output`), including
`fourierft_over_lora`, the median step-time ratio.

Usage:
    python benchmarks/train_step.py --backend tensorflow
    python benchmarks/train_step.py --backend jax --quick
    python benchmarks/train_step.py --shapes bert-base
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

METHODS = ("frozen", "lora", "fourierft", "full")
SHAPES = {
    "minilm": {"num_layers": 6, "hidden_dim": 384, "num_heads": 12, "batch": 32},
    "bert-base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "batch": 32},
}


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
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-of", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup = 3, 2, 2
    shape = SHAPES[args.shapes]
    args.batch = args.batch or shape["batch"]
    args.sequence_length = args.sequence_length or (
        128 if args.shapes == "bert-base" else 64
    )
    return args


def build(method, args):
    import keras
    import keras_hub
    import numpy as np

    import keras_fourierft

    shape = SHAPES[args.shapes]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30522,
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
        hidden_dim=shape["hidden_dim"],
        intermediate_dim=4 * shape["hidden_dim"],
        max_sequence_length=512,
    )
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=None
    )
    if method == "frozen":
        backbone.trainable = False
    elif method == "lora":
        backbone.enable_lora(args.lora_rank, target_layer_names=["query", "value"])
    elif method == "fourierft":
        keras_fourierft.enable_fourierft(
            model, n_frequency=args.n_frequency, target_layer_names=["query", "value"]
        )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1, 30522, (args.batch, args.sequence_length)).astype(
            "int32"
        ),
        "segment_ids": np.zeros((args.batch, args.sequence_length), "int32"),
        "padding_mask": np.ones((args.batch, args.sequence_length), "int32"),
    }
    y = rng.integers(0, 2, (args.batch,)).astype("int32")
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return model, x, y, trainable


def sync(model):
    import keras

    keras.ops.convert_to_numpy(model.trainable_weights[0])


def time_steps(model, x, y, steps):
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    sync(model)
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
    command += [
        "--n-frequency",
        str(args.n_frequency),
        "--lora-rank",
        str(args.lora_rank),
    ]
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_memory_mb"]


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
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_only(args):
    model, x, y, _ = build(args.memory_of, args)
    for _ in range(3):
        model.train_on_batch(x, y)
    sync(model)
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
    return info


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.memory_of:
        memory_only(args)
        return
    built = {method: build(method, args) for method in args.methods}
    for model, x, y, _ in built.values():
        time_steps(model, x, y, args.warmup)
    samples = {method: [] for method in args.methods}
    for _ in range(args.repeats):
        for method in args.methods:
            model, x, y, _ = built[method]
            samples[method].append(time_steps(model, x, y, args.steps))
    results = {
        method: {
            "median_step_ms": statistics.median(samples[method]),
            "trainable_params": built[method][3],
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
        "batch": args.batch,
        "sequence_length": args.sequence_length,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(args.backend),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    if "lora" in results and "fourierft" in results:
        report["fourierft_over_lora"] = (
            results["fourierft"]["median_step_ms"] / results["lora"]["median_step_ms"]
        )
        if "peak_memory_mb" in results["lora"]:
            report["fourierft_memory_over_lora"] = (
                results["fourierft"]["peak_memory_mb"]
                / results["lora"]["peak_memory_mb"]
            )
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
