"""Whole-model `.keras` files of adapted models."""

import json
import os
import warnings
import zipfile

import keras

from keras_fourierft import keras_internals
from keras_fourierft import surgery
from keras_fourierft.config import FourierFTConfig

_RECORD = "fourierft.json"
_MAX_RECORD_BYTES = 64 * 1024
_MAX_RECORDS = 100_000


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file saved (with `model.save`) from an adapted model.

    Every adapted layer saves a small `fourierft.json` record (its settings
    and on/off state) among the file's assets, in the directory Keras names
    after the layer's place in the model. KerasHub backbones and task
    models, subclassed models and layers that build their sublayers
    themselves (e.g. `MultiHeadAttention`) rebuild plain layers from their
    config; this function re-adapts the recorded layers, compiles the model
    from its saved compile config (so the optimizer state is restored, as
    `keras.saving.load_model` does), then loads all weights. It works for
    every adapted model; `keras.saving.load_model` only for those whose
    config lists every adapted layer (Sequential and Functional models whose
    adapted layers are their own layers).

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
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist: no `.keras` file to load.")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a `.keras` archive. Save the model with "
            "`model.save('name.keras')`."
        )
    with zipfile.ZipFile(path) as archive:
        config = _read_json(archive, "config.json", path, limit=None)
        records = _read_records(archive, path)
    if not isinstance(config, dict):
        raise ValueError(f"{path!r}: config.json does not hold a model config.")
    with keras.saving.custom_object_scope(custom_objects or {}):
        model = keras.saving.deserialize_keras_object(
            {key: value for key, value in config.items() if key != "compile_config"},
            safe_mode=safe_mode,
        )
    if config.get("build_config") and not model.built:
        model.build_from_config(config["build_config"])
    layers = _recorded_layers(model, records, path)
    surgery._adapt_layers(
        model, {layer: records[at][0] for at, layer in layers.items()}
    )
    if compile and config.get("compile_config"):
        _compile(model, config["compile_config"])
    model.load_weights(path)
    for at, layer in layers.items():
        layer.adapter_enabled = records[at][1]
    return model


def _recorded_layers(model, records, path):
    """`{record path: layer}`, each a Dense/EinsumDense of `model`."""
    objects = keras_internals.saved_object_paths(model)
    layers = {}
    for at in records:
        layer = objects.get(at)
        if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            raise ValueError(
                f"{path!r} holds a FourierFT record for {at!r}, which is not a "
                "Dense/EinsumDense layer of the model the file describes. "
                "The file is damaged or was edited."
            )
        layers[at] = layer
    return layers


def _compile(model, compile_config):
    # As `Model.compile_from_config`, also for models with their own
    # `compile` (KerasHub tasks) that take Keras's arguments.
    try:
        model.compile(**keras.saving.deserialize_keras_object(compile_config))
    except TypeError as error:
        warnings.warn(
            f"The model was not compiled ({error}); call `compile()` after "
            "loading. Its optimizer state was not restored.",
            stacklevel=3,
        )
        return
    model.optimizer.build(model.trainable_variables)


def _write_record(layer, dir_path):
    """Writes an adapted layer's record into its `.keras` asset directory."""
    record = {
        "keras_fourierft": 1,
        "config": layer.fourierft_config.to_dict(),
        "enabled": layer.adapter_enabled,
    }
    with open(os.path.join(dir_path, _RECORD), "w") as file:
        json.dump(record, file)


def _read_record_file(dir_path):
    """`(config, enabled)` from an asset directory, or None without a record."""
    name = os.path.join(dir_path, _RECORD)
    if not os.path.isfile(name):
        return None
    if os.path.getsize(name) > _MAX_RECORD_BYTES:
        raise ValueError(f"{name!r} is larger than {_MAX_RECORD_BYTES} bytes.")
    with open(name, "rb") as file:
        return _parse_record(file.read(), name)


def _parse_record(data, source):
    try:
        record = json.loads(data)
    except ValueError as error:
        raise ValueError(f"{source}: not a FourierFT record ({error}).") from None
    if not isinstance(record, dict):
        raise ValueError(f"{source}: not a FourierFT record.")
    enabled = record.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{source}: `enabled` is {enabled!r}, not true/false.")
    return FourierFTConfig.from_dict(record.get("config"), source=source), enabled


def _read_records(archive, path):
    """`{asset path: (config, enabled)}` of a `.keras` archive's records."""
    suffix = "/" + _RECORD
    names = [
        n for n in archive.namelist() if n.startswith("assets/") and n.endswith(suffix)
    ]
    if len(names) > _MAX_RECORDS:
        raise ValueError(f"{path!r} holds too many FourierFT records.")
    return {
        name[len("assets/") : -len(suffix)]: _parse_record(
            _read_json_bytes(archive, name, path, _MAX_RECORD_BYTES),
            f"{path!r} ({name})",
        )
        for name in names
    }


def _read_json(archive, name, path, limit):
    data = _read_json_bytes(archive, name, path, limit)
    try:
        return json.loads(data)
    except ValueError as error:
        raise ValueError(f"{path!r}: cannot read {name}: {error}") from None


def _read_json_bytes(archive, name, path, limit):
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"{path!r} has no {name}; it is not a .keras file.") from None
    if limit is not None and info.file_size > limit:
        raise ValueError(f"{path!r}: {name} is larger than {limit} bytes.")
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path!r}: cannot read {name}: {error}") from None
