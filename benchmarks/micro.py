"""Micro benchmarks: delta_W rebuild (FFT vs direct real DFT), locations, files.

- delta_W forward + gradient w.r.t. the coefficients for 384^2, 768^2, 4096^2
  and n = 1,000 / 10,000 / 100,000, with the FFT path of the package and a
  direct real-DFT path (two matmuls with n x d cos/sin tables; run where
  d * n <= 7.68M, beyond that it takes seconds per call on a CPU), compiled
  with the backend's compiler; the relative error of each against numpy.
- frequency-location generation for 4096 x 4096, n = 1,000 (target < 5 ms).
- adapter file size: FourierFT `.weights.h5` vs KerasHub's `.lora.h5` for the
  same targets (query and value of MiniLM-L6 shapes).

Usage:
    python benchmarks/micro.py --backend tensorflow [--quick] [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import block  # noqa: E402
from common import compile_function  # noqa: E402
from common import median_ms  # noqa: E402
from common import minilm_classifier  # noqa: E402
from common import report  # noqa: E402
from keras import ops  # noqa: E402

import keras_fourierft  # noqa: E402
from keras_fourierft.spectral import kernel_indices  # noqa: E402
from keras_fourierft.spectral import spectral_delta  # noqa: E402


def direct_delta(coefficients, tables, scaling):
    """delta_W = (A_cos diag(c) B_cos - A_sin diag(c) B_sin) * scaling / (d1 d2)."""
    a_cos, a_sin, b_cos, b_sin, norm = tables
    weighted_cos = a_cos * coefficients[None, :]
    weighted_sin = a_sin * coefficients[None, :]
    delta = ops.matmul(weighted_cos, b_cos) - ops.matmul(weighted_sin, b_sin)
    return delta * (scaling / norm)


def direct_tables(indices, shape):
    rows, cols = indices[:, 0].astype(np.float64), indices[:, 1].astype(np.float64)
    phase_a = 2 * np.pi * np.outer(np.arange(shape[0]), rows) / shape[0]
    phase_b = 2 * np.pi * np.outer(cols, np.arange(shape[1])) / shape[1]
    tables = [np.cos(phase_a), np.sin(phase_a), np.cos(phase_b), np.sin(phase_b)]
    return [ops.convert_to_tensor(t.astype("float32")) for t in tables] + [
        float(shape[0] * shape[1])
    ]


def gradient_step(delta_fn):
    """Forward + gradient of sum(delta * weight) w.r.t. the coefficients."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss(c, weight):
            return (delta_fn(c) * weight).sum()

        return jax.jit(jax.value_and_grad(loss))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(c, weight):
            with tf.GradientTape() as tape:
                tape.watch(c)
                loss = tf.reduce_sum(delta_fn(c) * weight)
            return loss, tape.gradient(loss, c)

        return step
    import torch

    def step(c, weight):
        c = c.detach().requires_grad_(True)
        loss = (delta_fn(c) * weight).sum()
        (grad,) = torch.autograd.grad(loss, [c])
        return loss, grad

    return step


def delta_case(size, n, repeats):
    shape = (size, size)
    indices = kernel_indices(keras_fourierft.frequency_locations(size, size, n))
    rng = np.random.default_rng(0)
    coefficients = rng.normal(size=n).astype("float32")
    reference = np.zeros(shape, np.complex128)
    reference[indices[:, 0], indices[:, 1]] = coefficients
    reference = 150.0 * np.fft.ifft2(reference).real
    c = ops.convert_to_tensor(coefficients)
    weight = ops.convert_to_tensor(rng.normal(size=shape).astype("float32"))
    index_tensor = ops.convert_to_tensor(indices)
    result = {"shape": list(shape), "n": n}

    def fft_fn(values):
        return spectral_delta(values, index_tensor, shape, 150.0)

    paths = {"fft": fft_fn}
    if size * n <= 768 * 10_000:
        tables = direct_tables(indices, shape)
        paths["direct"] = lambda values: direct_delta(values, tables, 150.0)
    for name, fn in paths.items():
        compiled = compile_function(fn)
        error = np.abs(block(compiled(c)) - reference).max() / np.abs(reference).max()
        step = gradient_step(fn)
        block(step(c, weight)[1])
        result[f"{name}_forward_backward_ms"] = median_ms(
            lambda step=step: block(step(c, weight)[1]), repeats
        )
        result[f"{name}_relative_error"] = float(error)
    return result


def adapter_sizes():
    def backbone():
        return minilm_classifier().backbone

    folder = tempfile.mkdtemp()
    fourier = backbone()
    keras_fourierft.enable_fourierft(fourier, n_frequency=1000)
    fourier_path = os.path.join(folder, "adapter.weights.h5")
    keras_fourierft.save_fourierft_weights(fourier, fourier_path)
    lora = backbone()
    lora.enable_lora(8, target_layer_names=["query", "value"])
    lora_path = os.path.join(folder, "adapter.lora.h5")
    lora.save_lora_weights(lora_path)
    full_path = os.path.join(folder, "model.weights.h5")
    backbone().save_weights(full_path)
    sizes = {
        "fourierft_weights_h5_bytes": os.path.getsize(fourier_path),
        "lora_r8_lora_h5_bytes": os.path.getsize(lora_path),
        "full_model_weights_h5_bytes": os.path.getsize(full_path),
    }
    sizes["fourierft_over_lora"] = (
        sizes["fourierft_weights_h5_bytes"] / sizes["lora_r8_lora_h5_bytes"]
    )
    return sizes


def location_ms():
    samples = []
    for seed in range(20):
        start = time.perf_counter()
        keras_fourierft.frequency_locations(4096, 4096, 1000, seed=seed)
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(samples))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args()
    sizes = [384, 768] if args.quick else [384, 768, 4096]
    counts = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    repeats = 5 if args.quick else 15
    cases = [
        delta_case(size, n, repeats if size < 4096 else 3)
        for size in sizes
        for n in counts
    ]
    report(
        "micro",
        {
            "locations_4096x4096_n1000_ms": location_ms(),
            "delta_w": cases,
            "adapter_files": adapter_sizes(),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
