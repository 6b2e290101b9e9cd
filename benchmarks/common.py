"""Helpers shared by the benchmarks: backend selection, timing, JSON output."""

import json
import os
import platform
import statistics
import time


def select_backend(argv):
    """Sets KERAS_BACKEND from a `--backend NAME` argument before keras loads."""
    if "--backend" in argv:
        os.environ["KERAS_BACKEND"] = argv[argv.index("--backend") + 1]


def median_ms(function, repeats, number=1):
    """Median wall time of `number` calls of `function`, in milliseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            function()
        samples.append((time.perf_counter() - start) / number * 1000.0)
    return statistics.median(samples)


def compile_function(function):
    """Compiles a function of tensors with the backend's own compiler."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=False)
    if backend == "jax":
        import jax

        return jax.jit(function)
    return function


def block(value):
    import keras

    return keras.ops.convert_to_numpy(value)


def report(name, results, output=None):
    import keras

    data = {
        "benchmark": name,
        "backend": keras.backend.backend(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "keras": keras.__version__,
        **results,
    }
    text = json.dumps(data, indent=2)
    print(text)
    if output:
        with open(output, "w") as file:
            file.write(text + "\n")
    return data
