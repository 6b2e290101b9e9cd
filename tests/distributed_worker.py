"""Runs FourierFT on several JAX devices or processes; used by test_distribution.

JAX fixes its devices when it starts, so each run is a process of its own:

    python tests/distributed_worker.py data_parallel OUT_DIR
    python tests/distributed_worker.py model_parallel OUT_DIR
    python tests/distributed_worker.py process RANK PORT OUT_DIR

`data_parallel` uses 2 virtual CPU devices, `model_parallel` 4 (a 2x2 mesh),
`process` one device in each of two processes joined by
`jax.distributed.initialize`. Each run writes `result.json` (and arrays as
`.npz`) into OUT_DIR; a check that fails records its error there instead of
stopping the others.
"""

import json
import os
import sys
import time
import traceback

MODE = sys.argv[1]
DEVICES = {"data_parallel": 2, "model_parallel": 4, "process": 1}[MODE]
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"

import jax  # noqa: E402

RANK = 0
if MODE == "process":
    RANK, PORT, OUT = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError) as error:
        print(
            f"jax {jax.__version__} has no gloo CPU collectives, so two CPU "
            f"processes cannot train together here ({error})."
        )
        sys.exit(3)
    jax.distributed.initialize(
        f"127.0.0.1:{PORT}",
        num_processes=2,
        process_id=RANK,
        initialization_timeout=60,
    )
else:
    OUT = sys.argv[2]

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_fourierft  # noqa: E402
from keras_fourierft import fourier_layers  # noqa: E402

BATCH = 8
STEPS = 2
N_FREQUENCY = 24
RESULT = {"devices": len(jax.devices())}


def check(name):
    """Runs a check; records its result, or its error, under `name`."""

    def run(function):
        try:
            RESULT[name] = function()
        except Exception as error:  # recorded for the test to report
            RESULT[name] = {"error": f"{type(error).__name__}: {error}"}
            RESULT[name]["traceback"] = traceback.format_exc()[-3000:]
        return function

    return run


def gemma_lm(seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def data(samples=BATCH * STEPS, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "token_ids": rng.integers(1, 64, size=(samples, 8)).astype("int32"),
        "padding_mask": np.ones((samples, 8), "int32"),
    }
    return x, rng.integers(1, 64, size=(samples, 8)).astype("int32")


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )


def spectra(model):
    return {
        path: keras_fourierft.adapters._host_spectrum(layer)
        for path, layer in fourier_layers(model)
    }


def max_difference(a, b):
    return float(max(np.max(np.abs(a[key] - b[key])) for key in a))


def set_spectra(model, values):
    for path, layer in fourier_layers(model):
        layer.set_spectrum(values[path])


def enable(model, compute="auto", **settings):
    return keras_fourierft.enable_fourierft(
        model, n_frequency=N_FREQUENCY, compute=compute, **settings
    )


def reference(compute="auto"):
    """A single-device run: base weights, initial and trained spectra, outputs."""
    model = gemma_lm()
    base = model.get_weights()
    enable(model, compute)
    initial = spectra(model)
    x, y = data()
    outputs = model.predict(x, batch_size=BATCH, verbose=0)
    compile_model(model)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return {
        "base": base,
        "initial": initial,
        "outputs": outputs,
        "trained": spectra(model),
    }


def save_arrays(name, arrays):
    """Writes a dict of arrays whose keys may hold `/` (layer paths)."""
    np.savez(
        os.path.join(OUT, name), **{k.replace("/", "|"): v for k, v in arrays.items()}
    )


def load_arrays(name):
    with np.load(os.path.join(OUT, name)) as arrays:
        return {key.replace("|", "/"): arrays[key] for key in arrays.files}


def specs(model, names=("kernel", "coefficients")):
    return {
        variable.path: str(variable.value.sharding.spec)
        for variable in model.weights
        if variable.name in names
    }


# Data parallel: 2 devices, against one device.


def run_data_parallel():
    ref = reference()
    save_arrays("reference.npz", ref["trained"])
    initial = {f"base/{i}": w for i, w in enumerate(ref["base"])}
    initial.update({"initial/" + p: v for p, v in ref["initial"].items()})
    save_arrays("initial.npz", initial)
    distribution = keras.distribution.DataParallel()

    @check("fit")
    def _():
        with distribution.scope():
            model = gemma_lm()
            model.set_weights(ref["base"])
            enable(model)
            set_spectra(model, ref["initial"])
            x, y = data()
            compile_model(model)
            model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
            path = os.path.join(OUT, "data_parallel.weights.h5")
            keras_fourierft.save_fourierft_weights(model, path)
            fresh = gemma_lm()
            keras_fourierft.load_fourierft_weights(fresh, path)
            outputs = model.predict(x, batch_size=BATCH, verbose=0)
            reloaded = fresh.predict(x, batch_size=BATCH, verbose=0)
            coefficients = [layer.coefficients for _, layer in fourier_layers(model)]
            return {
                "coefficient_difference": max_difference(
                    spectra(model), ref["trained"]
                ),
                "reload_output_difference": float(np.max(np.abs(outputs - reloaded))),
                "coefficient_devices": [
                    len(c.value.sharding.device_set) for c in coefficients
                ],
                "coefficient_specs": [str(c.value.sharding.spec) for c in coefficients],
            }


# Model parallel: a 2x2 mesh with KerasHub's layout map.


def mesh():
    return keras.distribution.DeviceMesh(
        (2, 2), ("batch", "model"), keras.distribution.list_devices()
    )


def model_parallel(coefficients=None):
    layout_map = keras_hub.models.GemmaBackbone.get_layout_map(mesh())
    if coefficients is not None:
        layout_map[".*coefficients"] = coefficients
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )


def train_model_parallel(ref, compute, coefficients=None, round_trip=True):
    """Enables, checks layouts and outputs, fits and (with `round_trip`)
    saves the adapter and loads it into a fresh model."""
    distribution = model_parallel(coefficients)
    x, y = data()
    with distribution.scope():
        model = gemma_lm()
        model.set_weights(ref["base"])
        before = specs(model)
        enable(model, compute)
        set_spectra(model, ref["initial"])
        result = {"kernels_before": before, "specs_after": specs(model)}
        if round_trip:
            outputs = model.predict(x, batch_size=BATCH, verbose=0)
            result["output_difference"] = float(
                np.max(np.abs(outputs - ref["outputs"]))
            )
        compile_model(model)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        result["coefficient_difference"] = max_difference(
            spectra(model), ref["trained"]
        )
        result["specs_trained"] = specs(model)
        if round_trip:
            path = os.path.join(OUT, f"model_parallel_{compute}.weights.h5")
            keras_fourierft.save_fourierft_weights(model, path)
            fresh = gemma_lm()
            fresh.set_weights(ref["base"])
            keras_fourierft.load_fourierft_weights(fresh, path)
            result["specs_reloaded"] = specs(fresh)
            trained = model.predict(x, batch_size=BATCH, verbose=0)
            reloaded = fresh.predict(x, batch_size=BATCH, verbose=0)
            result["reload_output_difference"] = float(
                np.max(np.abs(trained - reloaded))
            )
        return result


def untouched(build, enable_under, **settings):
    """Enables under `enable_under`; returns the error and whether the model
    stayed as it was."""
    model = build()
    before = [(v.path, v.trainable, np.array(v.numpy())) for v in model.weights]
    try:
        with enable_under():
            enable(model, **settings)
    except ValueError as error:
        message = str(error)
    else:
        message = None
    after = [(v.path, v.trainable, np.array(v.numpy())) for v in model.weights]
    same = len(before) == len(after) and all(
        a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])
        for a, b in zip(before, after, strict=True)
    )
    return {
        "error": message,
        "untouched": same and not fourier_layers(model),
    }


def build_under(distribution):
    def build():
        if distribution is None:
            return gemma_lm()
        with distribution.scope():
            return gemma_lm()

    return build


class _NoDistribution:
    def __enter__(self):
        self.previous = keras.distribution.distribution()
        keras.distribution.set_distribution(None)

    def __exit__(self, *args):
        keras.distribution.set_distribution(self.previous)


def stateless_step(compute):
    """A JAX training step written with `stateless_call` (a custom training
    loop) on a layer laid out by ModelParallel, with inputs sharded over
    their features; the gradients are compared with the same step on
    unsharded values."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec

    device_mesh = mesh()
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map["query/kernel"] = ("model", "batch")
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 32)).astype("float32")
    with distribution.scope():
        keras.utils.set_random_seed(0)
        layer = keras.layers.Dense(16, name="query", use_bias=False)
        layer.build((None, 32))
        keras_fourierft.adapt_layer(layer, n_frequency=20, compute=compute)
        kernel_spec = str(layer.kernel.value.sharding.spec)

        def loss(trainable, frozen, inputs):
            outputs, _ = layer.stateless_call(trainable, frozen, inputs)
            return jax.numpy.sum(outputs**2)

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]
        sharded = jax.device_put(
            x, NamedSharding(device_mesh.backend_mesh, PartitionSpec(None, "model"))
        )
        grads = jax.jit(jax.grad(loss))(trainable, frozen, sharded)
        plain = jax.jit(jax.grad(loss))(
            [np.asarray(v) for v in trainable], [np.asarray(v) for v in frozen], x
        )
    return {
        "kernel_spec": kernel_spec,
        "gradient_difference": float(np.max(np.abs(grads[0] - plain[0]))),
        "gradient_scale": float(np.max(np.abs(plain[0]))),
    }


def run_model_parallel():
    results = {}
    for compute in ("dense", "activation"):
        ref = reference(compute)
        check(f"stateless_{compute}")(lambda compute=compute: stateless_step(compute))
        check(f"fit_{compute}")(lambda ref=ref, c=compute: train_model_parallel(ref, c))
        results[compute] = ref
    check("sharded_coefficients")(
        lambda: train_model_parallel(
            results["dense"], "dense", ("model",), round_trip=False
        )
    )
    distribution = model_parallel()
    check("bad_layout_two_axes")(
        lambda: untouched(
            build_under(distribution), model_parallel(("model", None)).scope
        )
    )
    check("bad_layout_indivisible")(
        lambda: untouched(
            build_under(distribution),
            model_parallel(("model",)).scope,
            n_frequency_pattern={"query": N_FREQUENCY + 1},
        )
    )
    check("built_without_distribution")(
        lambda: untouched(build_under(None), distribution.scope)
    )
    check("built_under_data_parallel")(
        lambda: untouched(
            build_under(keras.distribution.DataParallel()), distribution.scope
        )
    )
    check("enabled_without_distribution")(
        lambda: untouched(build_under(distribution), _NoDistribution)
    )


# Several processes: DataParallel over one device in each of two processes.


def run_process():
    distribution = keras.distribution.DataParallel(auto_shard_dataset=False)
    x, y = data()
    half = BATCH // 2
    # This process's half of every global batch, batches in order.
    rows = np.concatenate(
        [
            np.arange(step * BATCH + RANK * half, step * BATCH + (RANK + 1) * half)
            for step in range(STEPS)
        ]
    )
    local_x = {key: value[rows] for key, value in x.items()}
    saved = load_arrays("initial.npz")

    @check("fit")
    def _():
        with distribution.scope():
            model = gemma_lm()
            model.set_weights([saved[f"base/{i}"] for i in range(len(model.weights))])
            enable(model)
            set_spectra(
                model, {p: saved["initial/" + p] for p, _ in fourier_layers(model)}
            )
            compile_model(model)
            start = time.perf_counter()
            model.fit(
                local_x, y[rows], batch_size=half, epochs=1, shuffle=False, verbose=0
            )
            seconds = time.perf_counter() - start
            path = os.path.join(OUT, f"adapter_process_{RANK}.weights.h5")
            keras_fourierft.save_fourierft_weights(model, path)
            return {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "global_devices": jax.device_count(),
                "fit_seconds": seconds,
                "wrote": os.path.exists(path),
            }


if __name__ == "__main__":
    if MODE == "data_parallel":
        run_data_parallel()
    elif MODE == "model_parallel":
        run_model_parallel()
    else:
        run_process()
    name = f"result_{RANK}.json" if MODE == "process" else "result.json"
    with open(os.path.join(OUT, name), "w") as file:
        json.dump(RESULT, file, indent=1, default=str)
