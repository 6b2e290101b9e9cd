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


def status_mb(field):
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`) in MB, or None
    where the system has no such file (not Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return None


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


def minilm_classifier(num_layers=6, hidden_dim=384, num_heads=12, dropout=0.1):
    """A randomly initialised KerasHub BERT classifier (MiniLM-L6 shapes)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30522,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=4 * hidden_dim,
        max_sequence_length=512,
        dropout=dropout,
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=None, dropout=dropout
    )


def token_inputs(batch, sequence_length):
    """Random BERT inputs and labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (batch, sequence_length)
    x = {
        "token_ids": rng.integers(1, 30522, shape).astype("int32"),
        "segment_ids": np.zeros(shape, "int32"),
        "padding_mask": np.ones(shape, "int32"),
    }
    return x, rng.integers(0, 2, (batch,)).astype("int32")


LLAMA_TARGETS = (
    "query",
    "key",
    "value",
    "attention_output",
    "feedforward_gate_dense",
    "feedforward_intermediate_dense",
    "feedforward_output_dense",
)


def llama_causal_lm(num_layers, hidden_dim, num_heads, intermediate_dim):
    """A randomly initialised KerasHub Llama causal LM (small vocabulary)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=1000,
        num_layers=num_layers,
        num_query_heads=num_heads,
        num_key_value_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
    )
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def llama_inputs(batch, sequence_length):
    """Random Llama inputs and next-token labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, (batch, sequence_length + 1)).astype("int32")
    x = {
        "token_ids": tokens[:, :-1],
        "padding_mask": np.ones((batch, sequence_length), "int32"),
    }
    return x, tokens[:, 1:]
