"""Reading untrusted files: every declared size is checked before any data.

The one reader behind every format this package loads (no Keras): JSON
documents, safetensors files and HDF5 files. `name` is how messages name a
file. Anything malformed raises a `ValueError` naming it; nothing is read
past a declared limit, and nothing refers to another file. For HDF5,
`damaged(what)` returns the error to raise.
"""

import contextlib
import errno
import json
import math
import os
import zipfile

import h5py
import numpy as np

MAX_JSON_BYTES = 1 << 24
_MAX_TEXT = 1 << 16
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip
# HDF5 filters allowed (deflate, shuffle, fletcher32, h5py's lzf); none
# expands data more than `_MAX_EXPANSION` times.
_FILTERS = {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE}
_FILTERS |= {h5py.h5z.FILTER_FLETCHER32, 32000}
_MAX_EXPANSION = 1100
_LAYOUTS = {h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED}


def existing_file(path, what, hint=""):
    """`path` as a string if it is a file, else an `OSError` (`what` names it)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            errno.EISDIR, f"{path!r} is a folder, not a file.{hint}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            errno.ENOENT, f"No {what} at {path!r}: it does not exist.{hint}"
        )
    return path


def read_json(source, name, max_bytes=MAX_JSON_BYTES):
    """Reads a JSON document (a path or a binary file) of at most `max_bytes`."""
    try:
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as file:
                data = file.read(max_bytes + 1)
        else:
            data = source.read(max_bytes + 1)
    except OSError as error:
        raise ValueError(f"Cannot read {name!r}: {error.strerror}.") from None
    if len(data) > max_bytes:
        raise ValueError(f"{name!r} is larger than {max_bytes} bytes.")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # too deeply nested
        raise ValueError(f"{name!r} is not valid JSON: {error}.") from None


def archive_json(archive, member, path, max_bytes=MAX_JSON_BYTES):
    """Reads the JSON document `member` of the zip archive (at `path`)."""
    try:
        with archive.open(member) as file:
            return read_json(file, f"{path} ({member})", max_bytes)
    except KeyError:
        raise ValueError(
            f"{path!r} has no {member}; it is not a .keras file."
        ) from None
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path!r}: cannot read {member}: {error}") from None


def finite(value, where):
    """`value`, refused if it holds NaN or infinity; `where` names it."""
    bad = np.size(value) - np.isfinite(value).sum() if value.dtype.kind == "f" else 0
    if bad:
        raise ValueError(
            f"{where} holds {bad} non-finite values (NaN or infinity); such an "
            "adapter would turn every output into NaN. The training that wrote "
            "it diverged."
        )
    return value


def safetensors_header(path, name):
    """Checks a safetensors file's header; reads no tensor data.

    Returns:
        A dict with `metadata` (a dict or `None`) and `tensors` (name ->
        `(dtype, shape, start, end)`: the numpy dtype name, `"bfloat16"`
        included, and the byte range in the file).
    """

    def damaged(what):
        return ValueError(
            f"Cannot read {name!r}: {what}. The file is damaged or not a "
            "safetensors file."
        )

    size = os.path.getsize(path)
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if size < 8 or not 1 < length <= min(size - 8, MAX_JSON_BYTES):
            raise damaged(f"its header declares {length} bytes")
        try:
            header = json.loads(file.read(length).decode("utf-8"))
        except (ValueError, RecursionError) as error:
            raise damaged(f"its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    entries = {k: v if isinstance(v, dict) else {} for k, v in header.items()}
    tensors, start = {}, 8 + length
    for key, entry in sorted(entries.items(), key=lambda i: _begin(i[1])):
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        dtype = _DTYPES.get(entry.get("dtype"))
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype or "u1").itemsize
        if not (dtype and _int_list(shape) and _int_list(offsets, 2)) or (
            offsets[1] - offsets[0] != math.prod(shape) * itemsize
        ):
            raise damaged(f"tensor {key[:80]!r} is declared as {header[key]!r:.200}")
        if 8 + length + offsets[0] != start:
            raise damaged(f"tensor {key[:80]!r} does not follow the one before")
        start = 8 + length + offsets[1]
        dtype = dtype if dtype == "bfloat16" else np.dtype(dtype).name
        tensors[key] = (dtype, tuple(shape), 8 + length + offsets[0], start)
    if start != size:
        raise damaged(f"its header describes {start} bytes, the file has {size}")
    metadata = metadata if isinstance(metadata, dict) else None
    return {"metadata": metadata, "tensors": tensors}


def _begin(entry):
    offsets = entry.get("data_offsets")
    return offsets[0] if _int_list(offsets, 2) else -1


def _int_list(value, length=None):
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(type(v) is int and v >= 0 for v in value)
    )


def read_tensors(path, name, header, keys):
    """Reads the tensors `keys` (float16/bfloat16 as float32): name -> array."""
    result = {}
    with open(path, "rb") as file:
        for key in keys:
            dtype, shape, start, end = header["tensors"][key]
            file.seek(start)
            data = file.read(end - start)
            if len(data) != end - start:
                raise ValueError(f"Cannot read {name!r}: the file was truncated.")
            if dtype == "bfloat16":
                value = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
            else:
                value = np.frombuffer(data, np.dtype(dtype).newbyteorder("<"))
                value = value.astype("float32" if dtype == "float16" else dtype)
            result[key] = value.reshape(shape)
    return result


@contextlib.contextmanager
def hdf5_file(path, name, hint=""):
    """Opens an HDF5 file to read; errors of a damaged one name it."""
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"{name!r} is not an HDF5 file (it may be truncated or of another "
            f"format).{hint}"
        )
    try:
        with h5py.File(path, "r") as file:
            yield file
    except (OSError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"Cannot read {name!r}: {error}. The file is damaged or truncated."
        ) from None


def hdf5_groups(file, damaged, required, optional=()):
    """A file's groups (name -> the list of their datasets `0`, `1`, ...).

    Only hard links to the groups named and to datasets are accepted.
    """
    groups = _members(file, h5py.Group, damaged)
    if set(groups) - {*required, *optional} or set(required) - set(groups):
        names = " and ".join(map(repr, (*required, *optional)))
        raise damaged(f"the file holds {sorted(groups)}, not the groups {names}")
    numbered = {}
    for key, group in groups.items():
        members = _members(group, h5py.Dataset, damaged)
        names = [str(index) for index in range(len(members))]
        if sorted(members) != sorted(names):
            raise damaged(
                f"group {key!r} holds datasets {sorted(members)}, not 0 to "
                f"{len(members) - 1}"
            )
        numbered[key] = [members[name] for name in names]
    return numbered


def _members(group, kind, damaged):
    where = f"group {group.name.lstrip('/')!r}" if group.name != "/" else "the file"
    members = {}
    for key in group:
        link = group.get(key, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise damaged(
                f"{where} holds {type(link).__name__} {key!r}; links (to this "
                "or other files) are not part of the format"
            )
        if not isinstance(group[key], kind):
            raise damaged(
                f"{where} holds {type(group[key]).__name__} {key!r} where the "
                f"format has a {kind.__name__}"
            )
        members[key] = group[key]
    return members


def hdf5_attribute(obj, name, damaged, where, default=..., text=True):
    """A scalar attribute (text by default: decoded, bounded) or `default`."""
    if name not in obj.attrs:
        if default is not ...:
            return default
        raise damaged(f"{where} lacks the attribute {name!r}")
    shape = obj.attrs.get_id(name).shape
    if shape != ():
        raise damaged(f"attribute {name!r} of {where} has shape {shape}")
    value = obj.attrs[name]
    if text and isinstance(value, bytes | np.bytes_):
        with contextlib.suppress(UnicodeDecodeError):
            value = value.decode("utf-8")
    if text and (not isinstance(value, str) or len(value) > _MAX_TEXT):
        raise damaged(f"attribute {name!r} of {where} is not text")
    return value


def check_hdf5_dataset(data, where, kinds, damaged):
    """Checks a dataset's storage, dtype kind and declared size; reads nothing."""
    plist = data.id.get_create_plist()
    if plist.get_external_count():
        raise damaged(f"{where} uses HDF5 external storage (another file)")
    layout = plist.get_layout()
    if layout not in _LAYOUTS:
        what = "is a virtual dataset" if layout == h5py.h5d.VIRTUAL else "has"
        raise damaged(f"{where} {what} (layout {layout}); its values are elsewhere")
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if set(filters) - _FILTERS:
        raise damaged(f"{where} uses HDF5 filters {filters}")
    if data.shape is None or data.dtype.kind not in kinds or data.dtype.itemsize > 8:
        raise damaged(f"{where} holds {data.dtype} values of shape {data.shape}")
    size = math.prod(data.shape) * data.dtype.itemsize
    limit = os.path.getsize(data.file.filename) * (_MAX_EXPANSION if filters else 1)
    chunks = plist.get_chunk() if layout == h5py.h5d.CHUNKED else ()
    stored = data.id.get_storage_size()
    chunk_size = math.prod(chunks) * data.dtype.itemsize
    if (
        size > limit
        or chunk_size > max(size, 1 << 20)
        or (not filters and stored < size)
    ):
        raise damaged(
            f"{where} declares {data.shape} {data.dtype} values ({size} bytes) "
            f"but the file stores {stored} bytes for it"
        )


def hdf5_values(data, where, dtype=None):
    """A checked dataset's values (finite), as numpy."""
    return finite(np.asarray(data[()], dtype), where)
