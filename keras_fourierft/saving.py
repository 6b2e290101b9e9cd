"""Whole-model `.keras` files of adapted models."""

import json
import zipfile

import keras

from keras_fourierft.config import FourierFTConfig
from keras_fourierft.surgery import enable_fourierft_on_paths
from keras_fourierft.surgery import fourier_layers

RECORD_NAME = "fourierft.json"
_MAX_RECORD_BYTES = 64 * 1024
_MAX_RECORDS = 100_000


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Loads a `.keras` file saved (with `model.save`) from an adapted model.

    Sequential and Functional models list their layers in their config, so
    `keras.saving.load_model` restores their adapted layers already.
    KerasHub backbones and task models rebuild their layers from
    hyperparameters instead; for them this function rebuilds the plain
    model, re-enables FourierFT on the layers recorded in the file (each
    adapted layer saves a small `fourierft.json` record among the file's
    assets: its path and settings, `lr_multiplier` included), freezing by
    `enable_fourierft`'s default rule, then loads all weights. It works for
    both kinds of model.

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
        config = _read_json(archive, "config.json", filepath, limit=None)
        records = read_records(archive, filepath)
    if not isinstance(config, dict):
        raise ValueError(f"{filepath!r}: config.json does not hold a model config.")
    with keras.saving.custom_object_scope(custom_objects or {}):
        model = keras.saving.deserialize_keras_object(
            {key: value for key, value in config.items() if key != "compile_config"},
            safe_mode=safe_mode,
        )
    build_config = config.get("build_config")
    if build_config and not model.built:
        model.build_from_config(build_config)
    if records and not fourier_layers(model):
        enable_fourierft_on_paths(
            model,
            {record["path"]: record["config"] for record in records},
            source=f"The adapters in {filepath!r}",
        )
    model.load_weights(filepath)
    compile_config = config.get("compile_config")
    if compile and compile_config:
        model.compile_from_config(compile_config)
    return model


def read_records(archive, filepath):
    """The adapter records among a `.keras` archive's assets.

    Args:
        archive: An open `zipfile.ZipFile`.
        filepath: The archive's path, for error messages.

    Returns:
        A list of dicts with `path` and `config` (a `FourierFTConfig`).
    """
    names = [
        name
        for name in archive.namelist()
        if name.startswith("assets/") and name.endswith("/" + RECORD_NAME)
    ]
    if len(names) > _MAX_RECORDS:
        raise ValueError(f"{filepath!r} holds too many FourierFT records.")
    records = []
    for name in names:
        record = _read_json(archive, name, filepath, limit=_MAX_RECORD_BYTES)
        source = f"{filepath!r} ({name})"
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise ValueError(f"{source}: a FourierFT record without a layer path.")
        config = FourierFTConfig.from_dict(record.get("config"), source=source)
        records.append({"path": record["path"], "config": config})
    return records


def _read_json(archive, name, filepath, limit):
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(
            f"{filepath!r} has no {name}; it is not a .keras file."
        ) from None
    if limit is not None and info.file_size > limit:
        raise ValueError(f"{filepath!r}: {name} is larger than {limit} bytes.")
    try:
        return json.loads(archive.read(name))
    except (ValueError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{filepath!r}: cannot read {name}: {error}") from None
