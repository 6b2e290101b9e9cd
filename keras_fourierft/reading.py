"""Reading untrusted files: every declared size is checked before any data.

The one reader for every format this package loads (no Keras). `name` is
how messages name the file; anything malformed raises a `ValueError` naming
it, and nothing is read past a declared limit. For HDF5, `damaged(what)`
returns the error to raise.
"""

import json
import math
import os

import h5py
import numpy as np

MAX_JSON_BYTES = 1 << 24
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip


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
    except ValueError as error:
        raise ValueError(f"{name!r} is not valid JSON: {error}.") from None


def safetensors_header(path, name):
    """Checks a safetensors file's header; reads no tensor data.

    Returns:
        A dict with `metadata` (a dict or `None`) and `tensors` (name ->
        `(dtype, shape, start, end)`: the numpy dtype name, `"bfloat16"`
        included, and the byte range in the file).
    """
    size = os.path.getsize(path)

    def damaged(what):
        return ValueError(
            f"Cannot read {name!r}: {what}. The file is damaged or not a "
            "safetensors file."
        )

    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if size < 8 or not 1 < length <= min(size - 8, MAX_JSON_BYTES):
            raise damaged(f"its header declares {length} bytes")
        try:
            header = json.loads(file.read(length).decode("utf-8"))
        except ValueError as error:
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


# HDF5 filters allowed: deflate, shuffle, fletcher32 and h5py's lzf. None
# expands data more than `_MAX_EXPANSION` times.
_FILTERS = {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE}
_FILTERS |= {h5py.h5z.FILTER_FLETCHER32, 32000}
_MAX_EXPANSION = 1100
_LAYOUTS = {h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED}


def hdf5_members(group, kind, damaged, numbered=False):
    """A group's members, each a hard link to `kind`; by name or, if
    `numbered`, the list of members `0`, `1`, ...
    """
    members = {}
    where = f"group {group.name.lstrip('/')!r}" if group.name != "/" else "the file"
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
    if not numbered:
        return members
    names = [str(index) for index in range(len(members))]
    if sorted(members) != sorted(names):
        raise damaged(
            f"{where} holds datasets {sorted(members)}, not 0 to {len(members) - 1}"
        )
    return [members[name] for name in names]


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
