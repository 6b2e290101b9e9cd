"""Several devices: data-parallel training with Keras's own engines.

`--devices N` trains every run data-parallel over N devices,
`tf.distribute.MirroredStrategy` on TensorFlow and
`keras.distribution.DataParallel` on JAX: N GPUs (or TPUs on JAX) when there
are that many, else N virtual CPU devices (TensorFlow logical devices; on
JAX `startup.request_jax_host_devices` adds
`--xla_force_host_platform_device_count=N` to `XLA_FLAGS` before JAX
starts). The global batch stays `--batch-size`, split across the devices.
JAX shards each batch evenly, so there the batch size must be a multiple of
N, and each split is padded to a multiple of N with copies weighted 0 (the
guide's loss then averages over the weighted examples only, so every step
equals the one-device step). TensorFlow splits an epoch's last, partial
batch unevenly when it must.
"""

import contextlib
import functools

import keras
import numpy as np


class Distribution:
    """How runs use `--devices` devices.

    Attributes:
        description: Text for the log and `results.json`.
        scope: A function returning the context in which a run builds,
            compiles, trains and tests its model.
        multiple: Every batch's size must be a multiple of this (JAX shards
            a batch evenly over its devices; 1 elsewhere).
    """

    def __init__(self, description, scope=contextlib.nullcontext, multiple=1):
        self.description = description
        self.scope = scope
        self.multiple = multiple


@functools.cache
def distribution(devices, batch_size):
    """Sets up `devices` devices for training, once per process.

    On TensorFlow this has to happen before TensorFlow initializes (before
    anything runs a TensorFlow op), when it can still split the CPU.
    """
    if devices == 1:
        return Distribution("one device (no distribution)")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _mirrored_strategy(devices)
    if backend == "jax":
        return _data_parallel(devices, batch_size)
    raise SystemExit(
        f"--devices {devices} needs the tensorflow or jax backend (Keras has no "
        f"multi-device training on {backend}); run with KERAS_BACKEND=tensorflow "
        "or jax."
    )


def _mirrored_strategy(devices):
    import tensorflow as tf

    kind = "GPU"
    if not tf.config.list_physical_devices("GPU"):
        kind = "virtual CPU"
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * devices
            )
        except RuntimeError:
            pass  # TensorFlow has started; the devices it has must do.
    found = tf.config.list_logical_devices("GPU" if kind == "GPU" else "CPU")
    if len(found) < devices:
        raise SystemExit(
            f"--devices {devices}: TensorFlow has {len(found)} {kind} device(s) "
            f"({', '.join(d.name for d in found)}). Use at most that many, or "
            "start a fresh process (virtual CPU devices must be made before "
            "TensorFlow initializes)."
        )
    names = [device.name for device in found[:devices]]
    strategy = tf.distribute.MirroredStrategy(names)
    return Distribution(
        f"tf.distribute.MirroredStrategy over {devices} {kind} devices",
        strategy.scope,
    )


def _data_parallel(devices, batch_size):
    found = keras.distribution.list_devices()
    if len(found) < devices:
        raise SystemExit(
            f"--devices {devices}: JAX sees {len(found)} device(s) "
            f"({', '.join(found)}). On a CPU, start with XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices} (this script "
            "sets it when run directly and the backend is known to be jax)."
        )
    if batch_size % devices:
        raise SystemExit(
            f"--devices {devices} on JAX shards each batch evenly: use a "
            f"--batch-size that is a multiple of {devices} (not {batch_size})."
        )
    data_parallel = keras.distribution.DataParallel(devices=found[:devices])
    kind = found[0].split(":")[0].upper()
    return Distribution(
        f"keras.distribution.DataParallel over {devices} {kind} devices",
        data_parallel.scope,
        multiple=devices,
    )


def fit_arrays(part, multiple):
    """A split's `fit`/`evaluate` keywords (`x`, `y`) as they are or, when
    batches must be multiples of `multiple`, padded to a multiple of it with
    copies of its first example, and `sample_weight` weighting those 0."""
    features, labels = part["x"], part["y"]
    extra = -len(labels) % multiple
    if not extra:
        return part
    index = np.concatenate([np.arange(len(labels)), np.zeros(extra, dtype=int)])
    return {
        "x": {name: value[index] for name, value in features.items()},
        "y": labels[index],
        "sample_weight": (np.arange(len(index)) < len(labels)).astype("float32"),
    }
