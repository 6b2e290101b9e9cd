"""Whole-model `.keras` files of adapted models."""

import io
import json
import re
import zipfile

import h5py
import keras
import numpy as np

from keras_fourierft.layers import ADAPTER_SETTINGS
from keras_fourierft.surgery import enable_fourierft
from keras_fourierft.surgery import fourier_layers


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file saved (with `model.save`) from an adapted model.

    Sequential and Functional models list their layers in their config, so
    `keras.saving.load_model` restores their `FourierDense` layers already.
    KerasHub backbones and task models rebuild their layers from
    hyperparameters instead; for them this function rebuilds the plain
    model, re-enables FourierFT on the layers recorded in the file (with
    their `n_frequency`, `scaling`, seed, sampling and `lr_multiplier`,
    freezing by `enable_fourierft`'s default rule), then loads all weights.
    It works for both kinds of model.

    Args:
        filepath: Path of a `.keras` file.
        custom_objects: Optional dict, as for `keras.saving.load_model`.
        compile: Boolean, compile the model from its saved compile config.
        safe_mode: Boolean, as for `keras.saving.load_model`.

    Returns:
        The adapted Keras model.

    Example:

    ```python
    classifier.save("classifier.keras")
    restored = keras_fourierft.load_model("classifier.keras")
    ```
    """
    filepath = str(filepath)
    if not filepath.endswith(".keras") or not zipfile.is_zipfile(filepath):
        raise ValueError(
            f"{filepath!r} is not a `.keras` archive. Save the model with "
            "`model.save('name.keras')`."
        )
    with zipfile.ZipFile(filepath) as archive:
        config = json.loads(archive.read("config.json"))
        records = _adapter_records(archive.read("model.weights.h5"))
    with keras.saving.custom_object_scope(custom_objects or {}):
        model = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
    build_config = config.get("build_config")
    if build_config and not model.built:
        model.build_from_config(build_config)
    if records and not fourier_layers(model):
        _enable(model, records)
    model.load_weights(filepath)
    compile_config = config.get("compile_config")
    if compile and compile_config:
        model.compile_from_config(compile_config)
    return model


def _adapter_records(weights):
    """The adapter records saved by `FourierDense.save_own_variables`."""
    records = []

    def visit(_, item):
        if not isinstance(item, h5py.Dataset) or item.dtype != np.uint8:
            return
        try:
            record = json.loads(bytes(item[()]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(record, dict) and record.get("keras_fourierft"):
            records.append(record)

    with h5py.File(io.BytesIO(weights), "r") as file:
        file.visititems(visit)
    return [record for record in records if record.get("path")]


def _enable(model, records):
    groups = {}
    for record in records:
        config = record["config"]
        key = tuple(
            (name, config[name])
            for name in ADAPTER_SETTINGS + ("lr_multiplier",)
            if name != "n_frequency"
        )
        groups.setdefault(key, []).append(record)
    if len(groups) > 1:
        raise ValueError(
            "The file's adapters use different scaling/seed/sampling settings; "
            "rebuild the model, enable FourierFT yourself and call "
            "`model.load_weights`."
        )
    (settings,) = groups
    paths = {f"^{re.escape(r['path'])}$": r["config"]["n_frequency"] for r in records}
    enable_fourierft(
        model,
        n_frequency=records[0]["config"]["n_frequency"],
        target_paths=list(paths),
        n_frequency_pattern=paths,
        coefficient_initializer="zeros",
        **dict(settings),
    )
