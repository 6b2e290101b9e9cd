"""Adapter files: the FourierFT coefficients alone, in a validated HDF5 file."""

import contextlib
import json
import math
import os

import h5py
import keras
import numpy as np

from keras_fourierft.config import SPECTRUM_FIELDS
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.config import check_finite
from keras_fourierft.config import check_integer
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

    Several processes (JAX, `jax.distributed.initialize`): only process 0
    writes the file; on the other processes the call checks its arguments
    and returns without writing. Process 0 reads the values it holds on its
    own devices, with no collective, so calling this on every process, or
    on process 0 alone, never waits for another process. Every saved value
    must be whole on process 0: the coefficients are, unless a `LayoutMap`
    entry splits them over devices of several processes (then a clear error
    says so).

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
    if not is_writing_process():
        return
    spectra = [host_spectrum(layer) for _, layer in layers]
    values = [(path, host_value(variable)) for path, variable in extra]

    def write(temporary):
        with h5py.File(temporary, "w") as file:
            _write(file, layers, spectra, values)

    write_atomically(filepath, write)


def load_fourierft_weights(model, filepath):
    """Loads an adapter file written by `save_fourierft_weights`.

    Everything is checked before any weight changes: the file's format and
    structure (see `read_adapter_file`), that it holds the same adapted
    layers (paths, 2-D shapes, `n_frequency`, `scaling`, seed and sampling)
    as the model, the shapes of any other stored weights (all before any
    value is read), and that every stored value is finite. On the first
    mismatch a `ValueError` names it and the model is left exactly as it
    was. A model without adapters is first enabled with the file's settings
    (after the same checks).

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
    filepath = _check_suffix(filepath)
    with _open(filepath) as file:
        header = _read_header(file, filepath)
        # Declared sizes are checked against the model before any value is
        # read, so a file cannot make the loader allocate more than the
        # model's own layers and weights hold.
        _check_model(model, header["layers"], header["extra"])
        content = _read_values(header, filepath)
    apply_adapter(model, content["layers"], content["extra"])


def apply_adapter(model, entries, extra=()):
    """Checks adapter entries against a model, then loads them.

    All checks run before any weight changes, so on a mismatch the model is
    left exactly as it was. A model without adapters is enabled first.

    Args:
        model: A Keras model.
        entries: A list of dicts, one per adapted layer in the order of
            `fourier_layers`: `path`, `in_features`, `out_features`, the
            `SPECTRUM_FIELDS` and `spectrum` (the effective coefficients).
        extra: A list of `(variable path, array)` for other weights.
    """
    matched = _check_model(model, entries, extra)
    if not fourier_layers(model):
        _enable_from(model, entries)
    for (_, layer), entry in zip(fourier_layers(model), entries, strict=True):
        layer.set_spectrum(entry["spectrum"])
    for variable, value in matched:
        variable.assign(value)


def read_adapter_file(filepath):
    """Reads and checks an adapter file without touching any model.

    The file must have exactly the structure `save_fourierft_weights`
    writes: HDF5 groups `fourierft` and `trainable` of datasets named
    `0`, `1`, ... held in the file itself. Links, external storage (values
    taken from other files), virtual datasets and objects the format does
    not define are refused, and every dataset's declared shape, type and
    storage are checked against its description (and the file's size)
    before its values are read, as are the descriptions themselves
    (positive sizes, `n_frequency` at most `in_features * out_features`, a
    finite `scaling`). Stored values must be finite. Any violation raises
    a `ValueError` that names the file.

    Args:
        filepath: Path of a `.weights.h5` adapter file.

    Returns:
        A dict with `format_version`, `package_version`, `layers` (a list of
        dicts: `path`, the fields of `_LAYER_FIELDS`, `spectrum`) and `extra`
        (a list of `(path, array)` for the other stored weights).
    """
    filepath = _check_suffix(filepath)
    with _open(filepath) as file:
        return _read_values(_read_header(file, filepath), filepath)


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


def host_spectrum(layer):
    """A layer's effective coefficients (`layer.spectrum`) as float32 numpy.

    Read on this process alone (see `distribution.host_value`).
    """
    stored = host_value(layer.coefficients).astype("float32")
    return stored * np.float32(layer.lr_multiplier)


def _write(file, layers, spectra, extra):
    file.attrs["format"] = FORMAT
    file.attrs["format_version"] = FORMAT_VERSION
    file.attrs["package_version"] = __version__
    group = file.create_group("fourierft")
    for index, ((path, layer), spectrum) in enumerate(
        zip(layers, spectra, strict=True)
    ):
        data = group.create_dataset(str(index), data=spectrum)
        data.attrs["path"] = path
        data.attrs["config"] = json.dumps(layer.adapter_config())
    group = file.create_group("trainable")
    for index, (path, value) in enumerate(extra):
        data = group.create_dataset(str(index), data=value)
        data.attrs["path"] = path


# HDF5 filters a coefficient file may use: deflate (gzip), shuffle,
# fletcher32 and h5py's lzf. No filter expands data more than this.
_FILTERS = {
    h5py.h5z.FILTER_DEFLATE,
    h5py.h5z.FILTER_SHUFFLE,
    h5py.h5z.FILTER_FLETCHER32,
    32000,
}
_MAX_EXPANSION = 1100
_LAYOUTS = {h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED}
_MAX_TEXT = 1 << 16


@contextlib.contextmanager
def _open(filepath):
    if not os.path.isfile(filepath):
        raise FileNotFoundError(f"No adapter file at {filepath!r}.")
    if not h5py.is_hdf5(filepath):
        raise ValueError(
            f"{filepath!r} is not an HDF5 file (it may be truncated or of "
            "another format). Pass a file written by `save_fourierft_weights`."
        )
    with _reading(filepath):
        file = h5py.File(filepath, "r")
    with file:
        yield file


@contextlib.contextmanager
def _reading(filepath):
    """Turns the errors of reading a damaged file into a `ValueError`."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"Cannot read adapter file {filepath!r}: {error}. The file is "
            "damaged or truncated."
        ) from None


def _malformed(filepath, what):
    return ValueError(
        f"Adapter file {filepath!r} is malformed: {what}. Pass a file written "
        "by `save_fourierft_weights`."
    )


def _read_header(file, filepath):
    """Checks a file's structure and descriptions; reads no stored values.

    Returns:
        A dict with `format_version`, `package_version`, `layers` (dicts:
        the descriptions, and `data`, the dataset) and `extra` (a list of
        `(path, dataset)`).
    """
    with _reading(filepath):
        if _text_attribute(file, "format", filepath, "the file", True) != FORMAT:
            raise ValueError(
                f"{filepath!r} is an HDF5 file but not a FourierFT adapter "
                "file (a full-model weights file loads with "
                "`model.load_weights`)."
            )
        version = _attribute(file, "format_version", filepath, "the file")
        if not isinstance(version, int | np.integer) or version < 1:
            raise _malformed(filepath, f"format_version is {version!r}")
        version = int(version)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{filepath!r} has adapter format version {version}; this "
                f"keras-fourierft ({__version__}) reads up to {FORMAT_VERSION}. "
                "Upgrade keras-fourierft."
            )
        package = ""
        if "package_version" in file.attrs:
            package = _text_attribute(file, "package_version", filepath, "the file")
        groups = _members(file, filepath, "the file", h5py.Group)
        unknown = sorted(set(groups) - {"fourierft", "trainable"})
        if unknown or "fourierft" not in groups:
            raise _malformed(
                filepath,
                f"the file holds {sorted(groups)}, not the groups 'fourierft' "
                "and 'trainable'",
            )
        layers = []
        for index, data in enumerate(_datasets(groups["fourierft"], filepath)):
            where = f"adapted layer {index}"
            entry = _layer_entry(data, filepath, where)
            _check_declared(data, filepath, where, (entry["n_frequency"],), "f")
            layers.append(entry)
        if not layers:
            raise _malformed(filepath, "it holds no adapted layers")
        extra = []
        for index, data in enumerate(_datasets(groups.get("trainable"), filepath)):
            where = f"stored weight {index}"
            path = _text_attribute(data, "path", filepath, where)
            _check_declared(data, filepath, f"{where} ({path!r})", None, "fiub")
            extra.append((path, data))
    return {
        "format_version": version,
        "package_version": package,
        "layers": layers,
        "extra": extra,
    }


def _read_values(header, filepath):
    """Reads the values of checked datasets; refuses non-finite ones."""
    layers, extra = [], []
    with _reading(filepath):
        for entry in header["layers"]:
            spectrum = np.asarray(entry["data"][()], dtype="float32")
            _check_finite(spectrum, filepath, f"layer {entry['path']!r}")
            entry = {k: v for k, v in entry.items() if k != "data"}
            layers.append({**entry, "spectrum": spectrum})
        for path, data in header["extra"]:
            value = np.asarray(data[()])
            _check_finite(value, filepath, f"weight {path!r}")
            extra.append((path, value))
    return {**header, "layers": layers, "extra": extra}


def _check_finite(value, filepath, what):
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(
            f"Adapter file {filepath!r}: {what} holds "
            f"{np.size(value) - np.isfinite(value).sum()} non-finite values "
            "(NaN or infinity); such an adapter would turn every output into "
            "NaN. The training that wrote it diverged."
        )


def _members(group, filepath, where, kind):
    """A group's members by name, each a hard link to an object of `kind`."""
    members = {}
    for name in group:
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise _malformed(
                filepath,
                f"{where} holds {type(link).__name__} {name!r}; links (to "
                "this or other files) are not part of the format",
            )
        member = group[name]
        if not isinstance(member, kind):
            raise _malformed(
                filepath,
                f"{where} holds {type(member).__name__} {name!r} where the "
                f"format has a {kind.__name__}",
            )
        members[name] = member
    return members


def _datasets(group, filepath):
    """The datasets `0`, `1`, ... of a group, in order."""
    if group is None:
        return []
    where = f"group {group.name.lstrip('/')!r}"
    members = _members(group, filepath, where, h5py.Dataset)
    names = [str(index) for index in range(len(members))]
    if sorted(members) != sorted(names):
        raise _malformed(
            filepath,
            f"{where} holds datasets {sorted(members)}, not 0 to {len(members) - 1}",
        )
    return [members[name] for name in names]


def _attribute(obj, name, filepath, where):
    if name not in obj.attrs:
        raise _malformed(filepath, f"{where} lacks the attribute {name!r}")
    shape = obj.attrs.get_id(name).shape
    if shape != ():
        raise _malformed(filepath, f"attribute {name!r} of {where} has shape {shape}")
    return obj.attrs[name]


def _text_attribute(obj, name, filepath, where, optional=False):
    if optional and name not in obj.attrs:
        return None
    value = _attribute(obj, name, filepath, where)
    if isinstance(value, bytes | np.bytes_):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise _malformed(filepath, f"attribute {name!r} of {where} is not text")
    return value


def _layer_entry(data, filepath, where):
    path = _text_attribute(data, "path", filepath, where)
    where = f"{where} ({path!r})"
    text = _text_attribute(data, "config", filepath, where)
    try:
        entry = json.loads(text)
    except ValueError as error:
        raise _malformed(
            filepath, f"the config of {where} is not JSON ({error})"
        ) from None
    if not isinstance(entry, dict):
        raise _malformed(filepath, f"the config of {where} is not a JSON object")
    missing = [field for field in _LAYER_FIELDS if field not in entry]
    if missing:
        raise _malformed(filepath, f"the config of {where} lacks {missing}")

    try:
        sizes = {
            field: check_positive_integer(field, entry[field])
            for field in ("in_features", "out_features", "n_frequency")
        }
        check_integer("seed", entry["seed"])
        for field in ("scaling", "center_frequency", "bandwidth"):
            if entry[field] is not None or field == "scaling":
                check_finite(field, entry[field])
    except ValueError as error:
        raise _malformed(filepath, f"{where} has {error}") from None
    if sizes["n_frequency"] > sizes["in_features"] * sizes["out_features"]:
        raise _malformed(
            filepath,
            f"{where} has n_frequency={entry['n_frequency']}, more than its "
            f"{entry['in_features']}x{entry['out_features']} weight has entries",
        )
    if not isinstance(entry["sampling"], str):
        raise _malformed(filepath, f"{where} has sampling={entry['sampling']!r}")
    entry["path"] = path
    entry["data"] = data
    return entry


def _check_declared(data, filepath, where, shape, kinds):
    """Checks a dataset's declaration, storage and size before reading it."""
    plist = data.id.get_create_plist()
    if plist.get_external_count():
        raise _malformed(
            filepath,
            f"{where} uses HDF5 external storage (its values would be read "
            "from another file)",
        )
    layout = plist.get_layout()
    if layout not in _LAYOUTS:
        what = "is a virtual dataset" if layout == h5py.h5d.VIRTUAL else "has"
        raise _malformed(
            filepath,
            f"{where} {what} (layout {layout}); its values would come from elsewhere",
        )
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if set(filters) - _FILTERS:
        raise _malformed(filepath, f"{where} uses HDF5 filters {filters}")
    if data.shape is None or data.dtype.kind not in kinds or data.dtype.itemsize > 8:
        raise _malformed(
            filepath, f"{where} holds {data.dtype} values of shape {data.shape}"
        )
    if shape is not None and data.shape != shape:
        raise _malformed(
            filepath,
            f"{where} declares n_frequency={shape[0]} but stores an array of "
            f"shape {data.shape}",
        )
    size = math.prod(data.shape) * data.dtype.itemsize
    limit = os.path.getsize(filepath) * (_MAX_EXPANSION if filters else 1)
    chunks = plist.get_chunk() if layout == h5py.h5d.CHUNKED else ()
    chunk_size = math.prod(chunks) * data.dtype.itemsize
    stored = data.id.get_storage_size()
    if (
        size > limit
        or (not filters and stored < size)
        or chunk_size > max(size, 1 << 20)
    ):
        raise _malformed(
            filepath,
            f"{where} declares {data.shape} {data.dtype} values ({size} "
            f"bytes) but the file stores {stored} bytes for it",
        )


def _check_model(model, entries, extra):
    """Checks declared entries and weights against a model; changes nothing.

    Returns:
        The `(variable, value)` pairs of the other weights.
    """
    if fourier_layers(model):
        _check_layers(model, entries)
    else:
        _check_enableable(model, entries)
    return _match_extra(model, list(extra))


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


def weight_shape(layer, description):
    """`(in_features, out_features)` of a built `Dense`/`EinsumDense`.

    Args:
        layer: A Keras layer.
        description: How an error message names the layer.

    Returns:
        A tuple of two integers, the 2-D view of the layer's kernel.
    """
    is_linear = isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    if not is_linear or not layer.built:
        raise ValueError(f"{description} is not a built Dense/EinsumDense.")
    view = kernel_view(layer, float_kernel_shape(layer))
    return view["in_features"], view["out_features"]


def _enable_from(model, entries):
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
