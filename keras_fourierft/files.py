"""Writing files so that a crash never leaves a damaged or mixed result.

`write_atomically` writes one file, `write_files_atomically` several that
belong together (a PEFT adapter folder's two files). Nothing here imports
Keras.
"""

import contextlib
import errno
import hashlib
import json
import os
import secrets
import socket
import time

import safetensors.numpy

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
# Safetensors header metadata (PEFT and transformers never read it): the
# digest of the settings of the `adapter_config.json` saved with the
# weights, so a folder whose two files come from different saves is refused.
PEFT_DIGEST_KEY = "keras_fourierft.config_sha256"
_PEFT_DIGEST_FIELDS = (
    "peft_type",
    "n_frequency",
    "n_frequency_pattern",
    "scaling",
    "random_loc_seed",
    "target_modules",
)
# A temporary file `.<name>.<host>-<pid>-<random>.tmp` left by a save that
# died is removed by a later save of the same file once its process is gone
# (same host), or after a day.
_STALE_AFTER_S = 24 * 3600
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def write_atomically(filepath, write):
    """Writes a file under a temporary name, then renames it over `filepath`.

    A failure at any point leaves a previous file at `filepath` untouched.
    The temporary file is a hidden file next to the target; one left by a
    killed process is removed by the next save of the same file. The new
    file gets the mode of the file it replaces or, for a new file, `0o666`
    less the umask. A `filepath` that is a symbolic link keeps pointing to
    the new file. An `OSError` names `filepath` and what to do.

    Args:
        filepath: The final path.
        write: A function of the temporary path that writes the file.
    """
    write_files_atomically([(filepath, write)])


def write_files_atomically(files):
    """Writes several files completely, then renames them into place in order.

    Every file is written and flushed under its temporary name before the
    first rename, so an error in any writer leaves all previous files
    untouched; only a crash between the renames (microseconds) can leave the
    first files new and the later ones old (see `write_peft_folder`).

    Args:
        files: A list of `(filepath, write)` pairs, renamed in this order.
    """
    targets = [(os.fspath(path), write) for path, write in files]
    temporaries = []
    try:
        for path, write in targets:
            target = _checked_target(path)
            _remove_stale_temporaries(target)
            temporary = _create_temporary(path, target)
            temporaries.append((temporary, target))
            write(temporary)
            _fsync(temporary)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(temporary, os.stat(target).st_mode & 0o7777)
        for temporary, target in temporaries:
            os.replace(temporary, target)
        for folder in {os.path.dirname(target) for _, target in temporaries}:
            with contextlib.suppress(OSError):  # not possible everywhere
                _fsync(folder)
    finally:
        for temporary, _ in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)


def _checked_target(path):
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise IsADirectoryError(
            errno.EISDIR, f"Cannot save {path!r}: it is a folder. Pass a file path."
        )
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            errno.ENOENT,
            f"Cannot save {path!r}: the folder {folder!r} does not exist. "
            "Create it first.",
        )
    return target


def _create_temporary(path, target):
    folder, name = os.path.split(target)
    temporary = os.path.join(
        folder, f".{name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        os.close(os.open(temporary, flags, 0o666))  # the umask applies
    except PermissionError:
        raise PermissionError(
            errno.EACCES,
            f"Cannot save {path!r}: the save writes a temporary file next to "
            "it and renames it into place, so that a failure never destroys "
            f"the previous file; that needs a writable folder, and {folder!r} "
            "is not writable. Make it writable or save elsewhere.",
        ) from None
    return temporary


def _remove_stale_temporaries(target):
    folder, name = os.path.split(target)
    for entry in os.listdir(folder):
        parts = entry.removeprefix(f".{name}.").removesuffix(".tmp").split("-")
        if not entry.startswith(f".{name}.") or len(parts) != 3:
            continue
        path = os.path.join(folder, entry)
        with contextlib.suppress(OSError, ValueError):
            host, pid = parts[0], int(parts[1])
            dead = host == _HOST and pid != os.getpid() and not _alive(pid)
            if dead or time.time() - os.lstat(path).st_mtime > _STALE_AFTER_S:
                os.remove(path)


def _alive(pid):
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT: use the age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def _fsync(path):
    handle = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_peft_folder(folder, config, tensors):
    """Writes a PEFT adapter folder: the weights, then the config.

    The weights file records a digest of the config's settings in its
    metadata, so a folder left by a save that died between its two renames
    (new weights, old config) is refused by `check_peft_pair`.

    Args:
        folder: The folder, created if needed.
        config: The `adapter_config.json` content, a dict.
        tensors: A dict from tensor name to numpy array.
    """
    metadata = {"format": "pt", PEFT_DIGEST_KEY: peft_config_digest(config)}
    os.makedirs(folder, exist_ok=True)
    # Serialised here: `safetensors.numpy.save_file` writes through a
    # temporary file of its own, which a kill would leave behind.
    weights = safetensors.numpy.save(tensors, metadata=metadata)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_files_atomically(
        [
            (os.path.join(folder, PEFT_WEIGHTS_NAME), lambda t: _write(t, weights)),
            (
                os.path.join(folder, PEFT_CONFIG_NAME),
                lambda t: _write(t, text.encode()),
            ),
        ]
    )


def _write(path, data):
    with open(path, "wb") as file:
        file.write(data)


def peft_config_digest(config):
    """The sha256 of the settings that give a PEFT adapter's weights meaning.

    Other fields (e.g. `base_model_name_or_path`) may be edited freely.
    """
    fields = {name: config.get(name) for name in _PEFT_DIGEST_FIELDS}
    if isinstance(fields["scaling"], int | float):
        fields["scaling"] = float(fields["scaling"])
    if isinstance(fields["target_modules"], list):
        fields["target_modules"] = sorted(map(str, fields["target_modules"]))
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_peft_pair(folder, config, metadata):
    """Refuses a PEFT folder whose weights were saved with another config.

    Args:
        folder: The folder, for the message.
        config: The parsed `adapter_config.json`.
        metadata: The weights file's header metadata (a dict or `None`).
            Weights without a digest (written by PEFT) are accepted.
    """
    recorded = (metadata or {}).get(PEFT_DIGEST_KEY)
    if recorded is not None and recorded != peft_config_digest(config):
        raise ValueError(
            f"The PEFT adapter at {os.fspath(folder)!r} is inconsistent: its "
            f"{PEFT_WEIGHTS_NAME} was saved with other settings than its "
            f"{PEFT_CONFIG_NAME} gives (n_frequency, scaling, random_loc_seed "
            "or the target modules). A save was interrupted between its two "
            "files, or one file was replaced or edited. Save the adapter again."
        )
