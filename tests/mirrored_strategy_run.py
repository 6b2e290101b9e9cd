"""FourierFT under `tf.distribute.MirroredStrategy` on 2 logical CPU devices.

Run by `tests/test_distribution_tf.py` in a child process (TensorFlow's
logical devices must be configured before TensorFlow initializes):

    python tests/mirrored_strategy_run.py REPORT_JSON WORK_DIR

Each case below is run on its own; the report holds, per case, what the
tests check, or the error it ended with.
"""

import json
import os
import sys
import traceback

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fourierft  # noqa: E402
from keras_fourierft import adapters  # noqa: E402
from tests.models import bert_classifier  # noqa: E402

GLOBAL_BATCH = 16
EPOCHS = 2
SETTINGS = dict(n_frequency=64, coefficient_initializer="zeros", compute="dense")


def classifier():
    return bert_classifier(dropout=0.0)


def data():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=(64, 8)).astype("int32")
    features = {
        "token_ids": tokens,
        "segment_ids": np.zeros_like(tokens),
        "padding_mask": np.ones_like(tokens),
    }
    return features, (tokens[:, 1] > 25).astype("int32")


def compile_model(model):
    # Plain SGD: the update is linear in the gradient, so the replicas'
    # all-reduced gradient must give the single-device step up to float32
    # round-off (Adam would hide a wrongly scaled gradient). With the
    # default lr_multiplier (30) the coefficients' step is 900x this rate.
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def spectra(model):
    return np.concatenate(
        [
            np.asarray(layer.spectrum)
            for _, layer in keras_fourierft.fourier_layers(model)
        ]
    )


def fit(model, callbacks=()):
    x, y = data()
    history = model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        verbose=0,
        shuffle=False,
        callbacks=list(callbacks),
    )
    return history.history["loss"]


def mirrored():
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def kinds(model):
    layers = keras_fourierft.fourier_layers(model)
    return sorted({type(layer.coefficients.value).__name__ for _, layer in layers})


def case_single_device(work):
    model = classifier()
    keras_fourierft.enable_fourierft(model, **SETTINGS)
    compile_model(model)
    losses = fit(model)
    head = keras.ops.convert_to_numpy(model.output_dense.kernel)
    return {"spectra": spectra(model), "losses": losses, "head": head}


def case_inside_scope(work):
    strategy = mirrored()
    with strategy.scope():
        model = classifier()
        keras_fourierft.enable_fourierft(model, **SETTINGS)
        compile_model(model)
    pattern = os.path.join(work, "inside-{epoch}.weights.h5")
    losses = fit(model, [keras_fourierft.FourierFTCheckpoint(pattern)])
    final = os.path.join(work, "inside-final.weights.h5")
    keras_fourierft.save_fourierft_weights(model, final)
    x, _ = data()
    unmerged = model.predict(x, verbose=0)
    keras_fourierft.merge_fourierft(model)
    merged = model.predict(x, verbose=0)
    return {
        "replicas": strategy.num_replicas_in_sync,
        "kinds": kinds(model),
        "spectra": spectra(model),
        "losses": losses,
        "head": keras.ops.convert_to_numpy(model.output_dense.kernel),
        "checkpoints": {
            str(epoch): _file_spectra(pattern.format(epoch=epoch))
            for epoch in range(1, EPOCHS + 1)
        },
        "saved": _file_spectra(final),
        "merge_error": float(np.abs(merged - unmerged).max()),
    }


def case_enabled_outside_scope(work):
    """Model built in the scope, FourierFT enabled outside any scope."""
    strategy = mirrored()
    with strategy.scope():
        model = classifier()
    keras_fourierft.enable_fourierft(model, **SETTINGS)
    with strategy.scope():
        compile_model(model)
    losses = fit(model)
    return {"kinds": kinds(model), "spectra": spectra(model), "losses": losses}


def case_adapter_loaded_outside_scope(work):
    """An adapter file loaded (and enabled) outside the model's scope."""
    strategy = mirrored()
    with strategy.scope():
        model = classifier()
    path = os.path.join(work, "inside-final.weights.h5")
    keras_fourierft.load_fourierft_weights(model, path)
    return {"kinds": kinds(model), "spectra": spectra(model)}


def _refused(model, strategy):
    before = [np.array(v.numpy()) for v in model.weights]
    classes = [type(layer).__name__ for _, layer in keras_fourierft.walk_layers(model)]
    try:
        with strategy.scope():
            keras_fourierft.enable_fourierft(model, **SETTINGS)
    except ValueError as error:
        message = str(error)
    else:
        message = None
    after = [np.array(v.numpy()) for v in model.weights]
    return {
        "message": message,
        "adapted": len(keras_fourierft.fourier_layers(model)),
        "same_classes": classes
        == [type(layer).__name__ for _, layer in keras_fourierft.walk_layers(model)],
        "same_weights": len(before) == len(after)
        and all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)),
        "trainable": sum(int(v.trainable) for v in model.weights),
        "weights": len(model.weights),
    }


def case_built_outside_scope(work):
    """Model built outside any scope, FourierFT enabled inside one."""
    return _refused(classifier(), mirrored())


def case_other_strategy(work):
    """Model built under one MirroredStrategy, enabled under another."""
    with mirrored().scope():
        model = classifier()
    return _refused(model, mirrored())


def _file_spectra(path):
    content = adapters._read_adapter_file(path)
    return np.concatenate([entry["spectrum"] for entry in content["layers"]])


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def main(report_path, work):
    report = {}
    for name, case in list(globals().items()):
        if not name.startswith("case_"):
            continue
        try:
            report[name[5:]] = _jsonable(case(work))
        except Exception:  # recorded for the test that checks this case
            report[name[5:]] = {"error": traceback.format_exc()}
    with open(report_path, "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
