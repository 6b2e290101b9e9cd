"""Whole-model `.keras` files of adapted models."""

import json
import os
import zipfile

import keras

from keras_fourierft import keras_internals
from keras_fourierft import reading
from keras_fourierft import surgery
from keras_fourierft.config import FourierFTConfig

_RECORD = "fourierft.json"
_MAX_RECORD_BYTES = 64 * 1024
_MAX_RECORDS = 100_000


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file saved (with `model.save`) from an adapted model.

    Each adapted layer saves a `fourierft.json` record (settings, on/off
    state) in the asset directory Keras names after the layer's place in
    the model. This rebuilds the model, re-adapts the recorded layers that
    came back plain (KerasHub models, `MultiHeadAttention` projections,
    subclassed models), compiles it from its saved compile config (so the
    optimizer state loads, as in `keras.saving.load_model`) and loads all
    weights. Trainability follows `enable_fourierft`'s default rule
    (re-apply `trainable_layers` or `bias` choices before training on).
    `keras.saving.load_model` restores only models whose config lists every
    adapted layer (their own layers of Sequential/Functional).

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
    path = reading.existing_file(filepath, "`.keras` file")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a `.keras` archive. Save the model with "
            "`model.save('name.keras')`."
        )
    with zipfile.ZipFile(path) as archive:
        config = reading.archive_json(archive, "config.json", path)
        records = _read_records(archive, path)
    if not isinstance(config, dict):
        raise ValueError(f"{path!r}: config.json does not hold a model config.")
    config = _unmarked(config)
    with keras.saving.custom_object_scope(custom_objects or {}):
        model = keras.saving.deserialize_keras_object(
            {key: value for key, value in config.items() if key != "compile_config"},
            safe_mode=safe_mode,
        )
    if config.get("build_config") and not model.built:
        model.build_from_config(config["build_config"])
    objects = keras_internals.saved_object_paths(model)
    layers = {at: objects.get(at) for at in records}
    for at, layer in layers.items():
        if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            raise ValueError(
                f"{path!r} holds a FourierFT record for {at!r}, which is not a "
                "Dense/EinsumDense layer of its model: the file is damaged."
            )
    if records:
        surgery._adapt_layers(model, {layers[at]: records[at][0] for at in records})
    if compile and config.get("compile_config"):
        # As `Model.compile_from_config`, also for KerasHub tasks (their own
        # `compile` takes Keras's arguments), so the optimizer state loads.
        model.compile(**keras.saving.deserialize_keras_object(config["compile_config"]))
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    for at, layer in layers.items():
        layer.adapter_enabled = records[at][1]
    return model


def _write_record(layer, dir_path):
    """Writes an adapted layer's record into its `.keras` asset directory."""
    config = layer.fourierft_config.to_dict()
    record = {"keras_fourierft": 1, "config": config, "enabled": layer.adapter_enabled}
    with open(os.path.join(dir_path, _RECORD), "w") as file:
        json.dump(record, file)


def _read_record_file(dir_path):
    """`(config, enabled)` from an asset directory, or None without a record."""
    name = os.path.join(dir_path, _RECORD)
    if not os.path.isfile(name):
        return None
    return _parse_record(reading.read_json(name, name, _MAX_RECORD_BYTES), name)


def _parse_record(record, source):
    enabled = record.get("enabled", True) if isinstance(record, dict) else None
    if not isinstance(enabled, bool):
        raise ValueError(f"{source}: not a FourierFT record (or `enabled` not a bool).")
    return FourierFTConfig.from_dict(record.get("config"), source=source), enabled


def _unmarked(config):
    """The saved config without the keys that stop Keras's own loader."""
    if isinstance(config, list):
        return [_unmarked(value) for value in config]
    if not isinstance(config, dict):
        return config
    if set(config) == {surgery.LOAD_MARK}:
        return _unmarked(config[surgery.LOAD_MARK])
    return {k: _unmarked(v) for k, v in config.items() if k != surgery.LOAD_MARK}


def _read_records(archive, path):
    """`{asset path: (config, enabled)}` of a `.keras` archive's records."""
    names = [n for n in archive.namelist() if n.endswith("/" + _RECORD)]
    names = [name for name in names if name.startswith("assets/")]
    if len(names) > _MAX_RECORDS:
        raise ValueError(f"{path!r} holds too many FourierFT records.")
    return {
        name[len("assets/") : -len(_RECORD) - 1]: _parse_record(
            reading.archive_json(archive, name, path, _MAX_RECORD_BYTES),
            f"{path!r} ({name})",
        )
        for name in names
    }
