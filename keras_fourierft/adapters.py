"""Adapter files: the FourierFT coefficients alone, in a validated HDF5 file."""

import json
import os

import h5py
import keras
import numpy as np

from keras_fourierft import reading
from keras_fourierft.config import SPECTRUM_FIELDS
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.config import check_positive_integer
from keras_fourierft.distribution import host_value
from keras_fourierft.distribution import is_writing_process
from keras_fourierft.files import write_atomically
from keras_fourierft.layers import float_kernel_shape
from keras_fourierft.layers import kernel_view
from keras_fourierft.surgery import enable_fourierft_on_paths
from keras_fourierft.surgery import fourier_layers
from keras_fourierft.surgery import owned_variables
from keras_fourierft.surgery import walk_layers
from keras_fourierft.version import __version__

FORMAT = "keras_fourierft.adapter"
FORMAT_VERSION = 1
SUFFIX = ".weights.h5"
_LAYER_FIELDS = ("in_features", "out_features") + SPECTRUM_FIELDS
_PASS = " Pass a file written by `save_fourierft_weights`."


def save_fourierft_weights(model, filepath, include_trainable_weights=False):
    """Saves a model's FourierFT adapter to a `.weights.h5` file.

    The file holds every adapted layer's effective spectrum (4 bytes per
    coefficient), path, 2-D shape and settings and, optionally, the model's
    other trainable weights (e.g. a task head). Saving goes through a
    temporary file in the same (writable) folder, so a failure never
    destroys a previous file. With several JAX processes only process 0
    writes, from the values on its own devices.

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
    layers = _layers_to_save(model)
    extra = _other_trainable(model) if include_trainable_weights else []
    if not is_writing_process():
        return
    spectra = [(path, _host_spectrum(layer)) for path, layer in layers]
    values = [(path, host_value(variable)) for path, variable in extra]
    for path, value in spectra + values:
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise NonFiniteWeightsError(
                f"Not saving {filepath!r}: {path!r} holds NaN or infinity (the "
                "training diverged), and such an adapter would turn every "
                "output into NaN. Nothing was written; a previous file there "
                "is unchanged."
            )

    def write(temporary):
        with h5py.File(temporary, "w") as file:
            file.attrs.update(
                format=FORMAT,
                format_version=FORMAT_VERSION,
                package_version=__version__,
            )
            group = file.create_group("fourierft")
            for index, (path, spectrum) in enumerate(spectra):
                data = group.create_dataset(str(index), data=spectrum)
                data.attrs["path"] = path
                data.attrs["config"] = json.dumps(layers[index][1].adapter_config())
            group = file.create_group("trainable")
            for index, (path, value) in enumerate(values):
                group.create_dataset(str(index), data=value).attrs["path"] = path

    write_atomically(filepath, write)


def load_fourierft_weights(model, filepath):
    """Loads an adapter file written by `save_fourierft_weights`.

    Everything is checked before any weight changes: the file's structure
    and declared sizes, its layers against the model's by path (shapes and
    settings), its other weights against the model's trainable variables,
    and that every value is finite. On a mismatch a `ValueError` names it
    and the model is left as it was. A model without adapters is enabled
    with the file's settings; a merged model stays merged.

    Args:
        model: A Keras model with the architecture the adapter was trained on.
        filepath: Path of a `.weights.h5` adapter file.

    Example:

    ```python
    keras_fourierft.load_fourierft_weights(model, "sst2.weights.h5")
    ```
    """
    content = _read_adapter_file(filepath, model)
    _apply_adapter(model, content["layers"], content["extra"])


def _apply_adapter(model, entries, extra=()):
    """Loads adapter entries (dicts: `path`, `_LAYER_FIELDS`, `spectrum`) and
    `(path, array)` weights into a model, all or none after checking them.
    """
    matched = _check_model(model, entries, extra)
    if not fourier_layers(model):
        enable_fourierft_on_paths(
            model,
            {
                entry["path"]: FourierFTConfig.from_dict(
                    {name: entry[name] for name in SPECTRUM_FIELDS}
                )
                for entry in entries
            },
            source="The adapter file's layers",
        )
    layers = dict(fourier_layers(model))
    merged = [layer for layer in layers.values() if layer.merged]
    try:  # Unmerging refuses a kernel changed while merged: undo, then raise.
        for layer in merged:
            layer.unmerge()
    except ValueError:
        for layer in merged:
            if not layer.merged:
                layer.merge()
        raise
    for entry in entries:
        layers[entry["path"]].set_spectrum(entry["spectrum"])
    for variable, value in matched:
        variable.assign(value)
    for layer in merged:
        layer.merge()


def _check_suffix(filepath):
    filepath = os.fspath(filepath)
    if not filepath.endswith(SUFFIX):
        raise ValueError(
            f"Adapter files must end in {SUFFIX!r}. Received: {filepath!r}"
        )
    return filepath


def _layers_to_save(model):
    layers = fourier_layers(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no FourierFT adapters to save. Call "
            "`enable_fourierft` first."
        )
    return layers


def _other_trainable(model):
    coefficients = {id(layer.coefficients) for _, layer in fourier_layers(model)}
    return [
        (path, variable)
        for path, variable in owned_variables(model)
        if variable.trainable and id(variable) not in coefficients
    ]


class NonFiniteWeightsError(ValueError):
    """Weights to save hold NaN or infinity; nothing was written."""


def _host_spectrum(layer):
    """A layer's effective coefficients as float32 numpy, read on this process."""
    stored = host_value(layer.coefficients).astype("float32")
    return stored * np.float32(layer.lr_multiplier)


def _read_adapter_file(filepath, model=None):
    """Reads and checks an adapter file: `format_version`, `package_version`,
    `layers` (dicts: `path`, `_LAYER_FIELDS`, `spectrum`) and `extra` (`(path,
    array)` pairs). Declared sizes are checked against a `model` before any
    value is read, so a file cannot allocate more than the model holds.
    """
    filepath = reading.existing_file(_check_suffix(filepath), "adapter file", _PASS)

    def damaged(what):
        return ValueError(f"Adapter file {filepath!r} is malformed: {what}.{_PASS}")

    with reading.hdf5_file(filepath, filepath, _PASS) as file:
        if reading.hdf5_attribute(file, "format", damaged, "the file", None) != FORMAT:
            raise ValueError(
                f"{filepath!r} is an HDF5 file but not a FourierFT adapter file "
                "(a full-model weights file loads with `model.load_weights`)."
            )
        version = reading.hdf5_attribute(
            file, "format_version", damaged, "the file", text=False
        )
        if not isinstance(version, int | np.integer) or version < 1:
            raise damaged(f"format_version is {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{filepath!r} has adapter format version {version}; this "
                f"keras-fourierft ({__version__}) reads up to {FORMAT_VERSION}. "
                "Upgrade keras-fourierft."
            )
        package = reading.hdf5_attribute(
            file, "package_version", damaged, "the file", ""
        )
        groups = reading.hdf5_groups(file, damaged, ["fourierft"], ["trainable"])
        layers = [
            _layer_entry(data, damaged, f"adapted layer {index}")
            for index, data in enumerate(groups["fourierft"])
        ]
        if not layers:
            raise damaged("it holds no adapted layers")
        extra = []
        for index, data in enumerate(groups.get("trainable", [])):
            path = reading.hdf5_attribute(
                data, "path", damaged, f"stored weight {index}"
            )
            reading.check_hdf5_dataset(
                data, f"stored weight {index} ({path!r})", "fiub", damaged
            )
            extra.append((path, data))
        if model is not None:
            _check_model(model, layers, extra, trainable=False)
        where = f"Adapter file {filepath!r}: "
        for entry in layers:
            entry["spectrum"] = reading.hdf5_values(
                entry.pop("data"), f"{where}layer {entry['path']!r}", "float32"
            )
        extra = [(p, reading.hdf5_values(d, where + p)) for p, d in extra]
    return dict(
        format_version=int(version), package_version=package, layers=layers, extra=extra
    )


def _layer_entry(data, damaged, where):
    path = reading.hdf5_attribute(data, "path", damaged, where)
    where = f"{where} ({path!r})"
    try:
        entry = json.loads(reading.hdf5_attribute(data, "config", damaged, where))
    except (ValueError, RecursionError) as error:  # RecursionError: too nested
        raise damaged(f"the config of {where} is not JSON ({error})") from None
    if not isinstance(entry, dict):
        raise damaged(f"the config of {where} is not a JSON object")
    missing = [field for field in _LAYER_FIELDS if field not in entry]
    if missing:
        raise damaged(f"the config of {where} lacks {missing}")
    try:
        for field in ("in_features", "out_features"):
            check_positive_integer(field, entry[field])
        spectrum = {name: entry[name] for name in SPECTRUM_FIELDS}
        FourierFTConfig.from_dict(spectrum, source="the settings")
    except ValueError as error:
        raise damaged(f"{where} has {error}") from None
    if entry["n_frequency"] > entry["in_features"] * entry["out_features"]:
        raise damaged(
            f"{where} has n_frequency={entry['n_frequency']}, more than its "
            f"{entry['in_features']}x{entry['out_features']} weight has entries"
        )
    reading.check_hdf5_dataset(data, where, "f", damaged)
    if data.shape != (entry["n_frequency"],):
        raise damaged(
            f"{where} declares n_frequency={entry['n_frequency']} but stores "
            f"an array of shape {data.shape}"
        )
    return {**entry, "path": path, "data": data}


def _check_model(model, entries, extra, trainable=True):
    """The `(variable, value)` pairs of `extra`, all checked; changes nothing.

    An adapted model must have the file's layers and settings, a plain one
    layers of the file's shapes. `trainable=False` (before values are read)
    skips the trainability check.
    """
    adapted = dict(fourier_layers(model))
    layers = adapted or dict(walk_layers(model))
    paths = [entry["path"] for entry in entries]
    if adapted and sorted(paths) != sorted(adapted):
        raise ValueError(
            f"The adapter file has {len(entries)} adapted layers but model "
            f"{model.name!r} has {len(adapted)}, or others: the file adapts "
            f"{sorted(set(paths) - set(adapted))[:5]} and not "
            f"{sorted(set(adapted) - set(paths))[:5]}. It was trained on other "
            "targets or another architecture."
        )
    for entry in entries:
        path, layer = entry["path"], layers.get(entry["path"])
        if layer is None:
            raise ValueError(
                f"The adapter file adapts layer {path!r}, which model "
                f"{model.name!r} does not have."
            )
        if adapted:
            config = layer.adapter_config()
            field = next((f for f in _LAYER_FIELDS if config[f] != entry[f]), 0)
            if field:
                raise ValueError(
                    f"Layer {path!r}: the adapter file has {field}="
                    f"{entry[field]!r} but the model's adapter has {field}="
                    f"{config[field]!r}."
                )
            continue
        shape = _weight_shape(layer, f"Layer {path!r} of model {model.name!r}")
        if shape != (entry["in_features"], entry["out_features"]):
            raise ValueError(
                f"Layer {path!r}: the adapter file expects a "
                f"{entry['in_features']}x{entry['out_features']} weight, the "
                f"model's is {shape[0]}x{shape[1]}."
            )
    variables = dict(owned_variables(model))
    # Only variables the model trains may be loaded, never a coefficient or
    # the kernel of a layer the file adapts.
    protected = {id(layer.coefficients) for layer in adapted.values()}
    for path in paths:
        protected |= {id(v) for v in layers[path].weights if v.name != "bias"}
    matched = []
    for path, value in extra:
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
        if trainable and (not variable.trainable or id(variable) in protected):
            raise ValueError(
                f"The adapter file stores weight {path!r}, which is not "
                f"trainable in model {model.name!r} (an adapter file may only "
                "set the weights the model trains, such as a task head). Set "
                "it trainable if the file should load it."
            )
        matched.append((variable, value))
    return matched


def _weight_shape(layer, description):
    """`(in_features, out_features)` of a built `Dense`/`EinsumDense`."""
    is_linear = isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    if not is_linear or not layer.built:
        raise ValueError(f"{description} is not a built Dense/EinsumDense.")
    view = kernel_view(layer, float_kernel_shape(layer))
    return view["in_features"], view["out_features"]
