"""Inference benchmark: merged FourierFT vs the plain model, unmerged vs merged.

A KerasHub BERT backbone with a 2-class head (MiniLM-L6 shapes by default);
`predict_on_batch` timed interleaved for the plain model, the FourierFT model
(n = 1000 on query and value) unmerged, and the same model merged.

Usage:
    python benchmarks/inference.py --backend tensorflow [--quick] [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import minilm_classifier  # noqa: E402
from common import report  # noqa: E402
from common import token_inputs  # noqa: E402

import keras_fourierft  # noqa: E402


def timed(model, x, steps):
    start = time.perf_counter()
    for _ in range(steps):
        keras.ops.convert_to_numpy(model.predict_on_batch(x))
    return (time.perf_counter() - start) / steps * 1000.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args()
    repeats, steps = (3, 2) if args.quick else (21, 3)
    x, _ = token_inputs(args.batch, args.sequence_length)
    plain = minilm_classifier()
    unmerged = minilm_classifier()
    keras_fourierft.enable_fourierft(unmerged, n_frequency=1000)
    merged = minilm_classifier()
    keras_fourierft.enable_fourierft(merged, n_frequency=1000)
    keras_fourierft.merge_fourierft(merged)
    models = {
        "plain": plain,
        "fourierft_unmerged": unmerged,
        "fourierft_merged": merged,
    }
    outputs = {name: model.predict_on_batch(x) for name, model in models.items()}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["fourierft_merged"]),
        keras.ops.convert_to_numpy(outputs["fourierft_unmerged"]),
        atol=1e-3,
    )
    samples = {name: [] for name in models}
    for model in models.values():
        timed(model, x, 2)
    order = list(models)
    for _ in range(repeats):
        for name in order:
            samples[name].append(timed(models[name], x, steps))
        order.reverse()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    report(
        "inference",
        {
            "batch": args.batch,
            "sequence_length": args.sequence_length,
            "median_predict_ms": medians,
            "merged_over_plain": medians["fourierft_merged"] / medians["plain"],
            "unmerged_over_merged": medians["fourierft_unmerged"]
            / medians["fourierft_merged"],
        },
        args.output,
    )


if __name__ == "__main__":
    main()
