"""Adapter files: the FourierFT coefficients alone, in a validated HDF5 file."""

import json
import os
import re

import h5py
import numpy as np
from keras import ops

from keras_fourierft.files import write_atomically
from keras_fourierft.layers import ADAPTER_SETTINGS
from keras_fourierft.layers import kernel_view
from keras_fourierft.surgery import enable_fourierft
from keras_fourierft.surgery import fourier_layers
from keras_fourierft.surgery import owned_variables
from keras_fourierft.surgery import walk_layers
from keras_fourierft.version import __version__

FORMAT = "keras_fourierft.adapter"
FORMAT_VERSION = 1
SUFFIX = ".weights.h5"
_LAYER_FIELDS = ("in_features", "out_features") + ADAPTER_SETTINGS


def save_fourierft_weights(model, filepath, include_trainable_weights=False):
    """Saves a model's FourierFT adapter to a `.weights.h5` file.

    The file holds the effective spectrum of every adapted layer (kilobytes:
    4 bytes per coefficient) and, inside the file, everything needed to
    check it against a model later: each layer's path and 2-D shape,
    `n_frequency`, `scaling`, seed and sampling, and the package version.
    With `include_trainable_weights=True` the model's other trainable
    weights (e.g. a task head, trainable biases) are stored too.

    Saving is atomic: the file is written under a temporary name in the same
    folder and renamed over `filepath` only when complete, so a failure
    never destroys a previous good file. The file gets the mode of the file
    it replaces (a new one `0o666` less the umask, as Keras's files), and a
    `filepath` that is a symbolic link keeps pointing to the new file.

    Args:
        model: A model adapted with `enable_fourierft`.
        filepath: Path ending in `.weights.h5`.
        include_trainable_weights: Boolean, also store the other trainable
            weights.

    Example:

    ```python
    keras_fourierft.save_fourierft_weights(model, "sst2.weights.h5")
    ```
    """
    filepath = _check_suffix(filepath)
    layers = fourier_layers(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no FourierFT adapters to save. Call "
            "`enable_fourierft` first."
        )
    extra = _other_trainable(model) if include_trainable_weights else []

    def write(temporary):
        with h5py.File(temporary, "w") as file:
            _write(file, layers, extra)

    write_atomically(filepath, write)


def load_fourierft_weights(model, filepath):
    """Loads an adapter file written by `save_fourierft_weights`.

    Everything is checked before any weight changes: the file's format, that
    it holds the same adapted layers (paths, 2-D shapes, `n_frequency`,
    `scaling`, seed and sampling) as the model, and the shapes of any other
    stored weights. On the first mismatch a `ValueError` names it and the
    model is left exactly as it was. A model without adapters is first
    enabled with the file's settings (after the same checks).

    Loading a different adapter file into an adapted model swaps adapters
    without rebuilding or recompiling.

    Args:
        model: A Keras model with the architecture the adapter was trained on.
        filepath: Path of a `.weights.h5` adapter file.

    Example:

    ```python
    keras_fourierft.load_fourierft_weights(model, "sst2.weights.h5")
    ```
    """
    content = read_adapter_file(filepath)
    apply_adapter(model, content["layers"], content["extra"])


def apply_adapter(model, entries, extra=()):
    """Checks adapter entries against a model, then loads them.

    All checks run before any weight changes, so on a mismatch the model is
    left exactly as it was. A model without adapters is enabled first.

    Args:
        model: A Keras model.
        entries: A list of dicts, one per adapted layer in the order of
            `fourier_layers`: `path`, `in_features`, `out_features`, the
            `ADAPTER_SETTINGS` and `spectrum` (the effective coefficients).
        extra: A list of `(variable path, array)` for other weights.
    """
    if fourier_layers(model):
        _check_layers(model, entries)
    else:
        _check_enableable(model, entries)
    matched = _match_extra(model, list(extra))
    if not fourier_layers(model):
        _enable_from(model, entries)
    for (_, layer), entry in zip(fourier_layers(model), entries, strict=True):
        layer.set_spectrum(entry["spectrum"])
    for variable, value in matched:
        variable.assign(value)


def read_adapter_file(filepath):
    """Reads and checks an adapter file without touching any model.

    Args:
        filepath: Path of a `.weights.h5` adapter file.

    Returns:
        A dict with `format_version`, `package_version`, `layers` (a list of
        dicts: `path`, the fields of `_LAYER_FIELDS`, `spectrum`) and `extra`
        (a list of `(path, array)` for the other stored weights).
    """
    filepath = _check_suffix(filepath)
    if not os.path.isfile(filepath):
        raise FileNotFoundError(f"No adapter file at {filepath!r}.")
    if not h5py.is_hdf5(filepath):
        raise ValueError(
            f"{filepath!r} is not an HDF5 file (it may be truncated or of "
            "another format). Pass a file written by `save_fourierft_weights`."
        )
    try:
        with h5py.File(filepath, "r") as file:
            return _read(file, filepath)
    except (OSError, KeyError) as error:
        raise ValueError(
            f"Cannot read adapter file {filepath!r}: {error}. The file is "
            "damaged or truncated."
        ) from None


def _check_suffix(filepath):
    filepath = os.fspath(filepath)
    if not filepath.endswith(SUFFIX):
        raise ValueError(
            f"Adapter files must end in {SUFFIX!r}. Received: {filepath!r}"
        )
    return filepath


def _other_trainable(model):
    coefficients = {id(layer.coefficients) for _, layer in fourier_layers(model)}
    return [
        (path, variable)
        for path, variable in owned_variables(model)
        if variable.trainable and id(variable) not in coefficients
    ]


def _write(file, layers, extra):
    file.attrs["format"] = FORMAT
    file.attrs["format_version"] = FORMAT_VERSION
    file.attrs["package_version"] = __version__
    group = file.create_group("fourierft")
    for index, (path, layer) in enumerate(layers):
        data = group.create_dataset(
            str(index), data=ops.convert_to_numpy(layer.spectrum).astype("float32")
        )
        data.attrs["path"] = path
        data.attrs["config"] = json.dumps(layer.adapter_config())
    group = file.create_group("trainable")
    for index, (path, variable) in enumerate(extra):
        data = group.create_dataset(str(index), data=ops.convert_to_numpy(variable))
        data.attrs["path"] = path


def _read(file, filepath):
    if file.attrs.get("format") != FORMAT:
        raise ValueError(
            f"{filepath!r} is an HDF5 file but not a FourierFT adapter file "
            "(a full-model weights file loads with `model.load_weights`)."
        )
    version = int(file.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{filepath!r} has adapter format version {version}; this "
            f"keras-fourierft ({__version__}) reads up to {FORMAT_VERSION}. "
            "Upgrade keras-fourierft."
        )
    layers = []
    group = file["fourierft"]
    for index in range(len(group)):
        data = group[str(index)]
        entry = json.loads(data.attrs["config"])
        entry["path"] = str(data.attrs["path"])
        entry["spectrum"] = np.asarray(data[()], dtype="float32")
        if entry["spectrum"].shape != (entry["n_frequency"],):
            raise ValueError(
                f"Adapter file {filepath!r} is inconsistent: layer "
                f"{entry['path']!r} declares n_frequency={entry['n_frequency']} "
                f"but stores {entry['spectrum'].shape[0]} coefficients."
            )
        layers.append(entry)
    extra = []
    group = file.get("trainable", {})
    for index in range(len(group)):
        data = group[str(index)]
        extra.append((str(data.attrs["path"]), np.asarray(data[()])))
    return {
        "format_version": version,
        "package_version": str(file.attrs.get("package_version", "")),
        "layers": layers,
        "extra": extra,
    }


def _check_layers(model, entries):
    layers = fourier_layers(model)
    if len(layers) != len(entries):
        raise ValueError(
            f"The adapter file has {len(entries)} adapted layers but model "
            f"{model.name!r} has {len(layers)}. It was trained on other "
            "targets or another architecture."
        )
    for (path, layer), entry in zip(layers, entries, strict=True):
        if path != entry["path"]:
            raise ValueError(
                f"Adapted layer mismatch: the file's layer {entry['path']!r} "
                f"meets the model's layer {path!r}."
            )
        config = layer.adapter_config()
        for field in _LAYER_FIELDS:
            if config[field] != entry[field]:
                raise ValueError(
                    f"Layer {path!r}: the adapter file has {field}="
                    f"{entry[field]!r} but the model's adapter has {field}="
                    f"{config[field]!r}."
                )


def _check_enableable(model, entries):
    layers = {path: layer for path, layer in walk_layers(model)}
    for entry in entries:
        layer = layers.get(entry["path"])
        if layer is None:
            raise ValueError(
                f"The adapter file adapts layer {entry['path']!r}, which model "
                f"{model.name!r} does not have."
            )
        shape = weight_shape(layer, f"Layer {entry['path']!r} of model {model.name!r}")
        if shape != (entry["in_features"], entry["out_features"]):
            raise ValueError(
                f"Layer {entry['path']!r}: the adapter file expects a "
                f"{entry['in_features']}x{entry['out_features']} weight, the "
                f"model's is {shape[0]}x{shape[1]}."
            )
    settings = {
        (e["scaling"], e["seed"], e["sampling"], e["center_frequency"], e["bandwidth"])
        for e in entries
    }
    if len(settings) > 1:
        raise ValueError(
            "The adapter file mixes scaling/seed/sampling settings across "
            "layers; enable FourierFT on the model yourself, then load it."
        )


def weight_shape(layer, description):
    """`(in_features, out_features)` of a built `Dense`/`EinsumDense`.

    Args:
        layer: A Keras layer.
        description: How an error message names the layer.

    Returns:
        A tuple of two integers, the 2-D view of the layer's kernel.
    """
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        raise ValueError(f"{description} is not a built Dense/EinsumDense.")
    view = kernel_view(layer, kernel.shape)
    return view["in_features"], view["out_features"]


def _enable_from(model, entries):
    first = entries[0]
    enable_fourierft(
        model,
        n_frequency=first["n_frequency"],
        scaling=first["scaling"],
        seed=first["seed"],
        target_paths=[f"^{re.escape(e['path'])}$" for e in entries],
        n_frequency_pattern={
            f"^{re.escape(e['path'])}$": e["n_frequency"] for e in entries
        },
        sampling=first["sampling"],
        center_frequency=first["center_frequency"],
        bandwidth=first["bandwidth"],
        coefficient_initializer="zeros",
    )


def _match_extra(model, stored):
    if not stored:
        return []
    variables = dict(owned_variables(model))
    matched = []
    for path, value in stored:
        variable = variables.get(path)
        if variable is None:
            raise ValueError(
                f"The adapter file stores weight {path!r}, which model "
                f"{model.name!r} does not have."
            )
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Weight {path!r}: the adapter file has shape {value.shape}, "
                f"the model {tuple(variable.shape)}."
            )
        matched.append((variable, value))
    return matched
