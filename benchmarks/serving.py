"""Serving benchmark: one batch, a different FourierFT adapter per row.

A MiniLM-shaped KerasHub BERT classifier (6 layers, hidden 384, random
weights) with FourierFT (n = 1000) on query and value predicts one batch of
`--batch` rows of `--sequence-length` tokens (`predict_on_batch`, compiled).
Timed interleaved, medians of `--repeats`:

- `single`: one adapter, no bank (the reference cost; `compute_path`
  "auto", which picks the dense path at this size);
- `single_activation`: one adapter on the activation path, the computation
  a bank runs per row (FFT of the inputs, gather, scatter);
- `bank_<K>`: an `AdapterBank` of K adapters, each row selecting one at
  random (K = 1, 8, 64, 1024 by default);
- `swap_<K>`: the same mixed batch served by swapping adapters: for each
  adapter in the batch, load its file and predict its rows (the cost of
  serving without a bank, or PEFT-style sub-batches).

The bank's adapters cycle through `--files` saved adapter files (added
under K names). Reported: milliseconds per batch, ratios to `single` and
to `bank_1`, the bank's memory (total and per layer: (K + 1) * n * 4
bytes), the time to add one adapter, and the largest difference between
the bank's rows and the swapped single-adapter rows, relative to the
output's scale.

Usage:
    python benchmarks/serving.py [--backend jax] [--quick] [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import minilm_classifier  # noqa: E402
from common import report  # noqa: E402
from common import token_inputs  # noqa: E402

import keras_fourierft  # noqa: E402

N_FREQUENCY = 1000


def adapted_model(args, compute_path="auto"):
    model = minilm_classifier(num_layers=args.layers, hidden_dim=args.hidden)
    keras_fourierft.enable_fourierft(
        model, n_frequency=N_FREQUENCY, scaling=150.0, compute_path=compute_path
    )
    model.compile(jit_compile=keras.backend.backend() != "torch")
    return model


def save_files(model, folder, count):
    files = []
    for k in range(count):
        rng = np.random.default_rng(k)
        for layer in keras_fourierft.fourierft_layers(model).values():
            layer.set_spectrum(rng.normal(size=layer.n_frequency))
        path = str(folder / f"adapter_{k}.weights.h5")
        keras_fourierft.save_fourierft_weights(model, path)
        files.append(path)
    return files


def bank_case(args, files, k, x, choice):
    """A model with a bank of `k` adapters and its mixed-batch call."""
    model = adapted_model(args)
    bank = keras_fourierft.AdapterBank(model, capacity=k, max_batch_size=args.batch)
    start = time.perf_counter()
    for index in range(k):
        bank.add(f"adapter_{index}", files[index % len(files)])
    add_ms = (time.perf_counter() - start) / k * 1000.0
    bank.select([f"adapter_{index}" for index in choice])
    return model, bank, add_ms, lambda: np.asarray(model.predict_on_batch(x))


def swap_call(model, files, x, choice):
    """Serves the mixed batch one adapter at a time (load, predict rows)."""

    def call():
        output = None
        for adapter in np.unique(choice):
            rows = np.flatnonzero(choice == adapter)
            keras_fourierft.load_fourierft_weights(model, files[adapter % len(files)])
            part = np.asarray(
                model.predict_on_batch({n: v[rows] for n, v in x.items()})
            )
            if output is None:
                output = np.zeros((len(choice),) + part.shape[1:], part.dtype)
            output[rows] = part
        return output

    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 64, 1024])
    parser.add_argument("--swap", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.sequence_length, args.layers = 4, 8, 2
        args.adapters, args.swap, args.files, args.repeats = [1, 8], [8], 2, 3
    x, _ = token_inputs(args.batch, args.sequence_length)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        single = adapted_model(args)
        files = save_files(single, pathlib.Path(folder), args.files)
        activation = adapted_model(args, "activation")
        keras_fourierft.load_fourierft_weights(activation, files[-1])
        calls = {
            "single": lambda: np.asarray(single.predict_on_batch(x)),
            "single_activation": lambda: np.asarray(activation.predict_on_batch(x)),
        }
        cases, outputs, results = {}, {}, {}
        for k in args.adapters:
            choice = rng.integers(0, k, args.batch)
            model, bank, add_ms, call = bank_case(args, files, k, x, choice)
            calls[f"bank_{k}"] = call
            cases[k] = choice
            layers = keras_fourierft.fourierft_layers(model)
            results[f"bank_{k}"] = {
                "adapters": k,
                "distinct_in_batch": int(len(np.unique(choice))),
                "bank_bytes": bank.memory_bytes,
                "bank_bytes_per_layer": (k + 1) * N_FREQUENCY * 4,
                "adapted_layers": len(layers),
                "add_ms_per_adapter": add_ms,
            }
            if k in args.swap:
                swap_model = adapted_model(args)
                calls[f"swap_{k}"] = swap_call(swap_model, files, x, choice)
        for name, call in calls.items():  # compile every shape first
            outputs[name] = call()
        samples = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - start) * 1000.0)
        # What the adapters change: the equality figures mean something only
        # if two adapters give clearly different outputs.
        keras_fourierft.load_fourierft_weights(single, files[0])
        other = np.asarray(single.predict_on_batch(x))
    scale = float(np.abs(outputs["single"]).max())
    effect = float(np.abs(other - outputs["single"]).max() / scale)
    ms = {name: statistics.median(values) for name, values in samples.items()}

    for name in calls:
        entry = results.setdefault(name, {})
        entry["ms_per_batch"] = ms[name]
        entry["over_single"] = ms[name] / ms["single"]
        if "bank_1" in ms:
            entry["over_bank_1"] = ms[name] / ms["bank_1"]
        if name.startswith("swap_"):
            k = int(name.split("_")[1])
            difference = np.abs(outputs[name] - outputs[f"bank_{k}"]).max()
            entry["bank_rows_vs_swapped_relative"] = float(difference / scale)
    largest = max(args.adapters)
    report(
        "serving",
        {
            "batch": args.batch,
            "sequence_length": args.sequence_length,
            "n_frequency": N_FREQUENCY,
            "repeats": args.repeats,
            "results": results,
            "adapter_effect_relative": effect,
            "largest_bank_over_bank_1": ms[f"bank_{largest}"] / ms.get("bank_1", 1),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
