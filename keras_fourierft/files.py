"""Writing files so that a crash never leaves a damaged or mixed result.

Each file is written under a temporary name in its own folder, then renamed
over the target. Nothing here imports Keras.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import socket
import time

import safetensors.numpy

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
# Weights metadata (PEFT ignores it): the digest of the settings of the
# config saved with them, so a folder mixing two saves is refused.
PEFT_DIGEST_KEY = "keras_fourierft.config_sha256"
_PEFT_DIGEST_FIELDS = (
    "peft_type", "n_frequency", "n_frequency_pattern", "scaling",
    "random_loc_seed", "target_modules",
)  # fmt: skip
# A temporary `.<name>.<host>-<pid>-<random>.tmp` left by a save that died is
# removed by the next save of the same file: at once if its process (on this
# host) is gone, else after a day.
_STALE_AFTER_S = 24 * 3600
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def write_atomically(filepath, write):
    """Writes a file under a temporary name, then renames it over `filepath`.

    A failure leaves a previous file untouched; the new file keeps its mode
    (a new one `0o666` less the umask) and a symbolic link keeps pointing to
    it. An `OSError` names `filepath` and what to do.

    Args:
        filepath: The final path.
        write: A function of the temporary path that writes the file.
    """
    write_files_atomically([(filepath, write)])


def write_files_atomically(files):
    """Writes several files completely, then renames them into place in order.

    An error in any writer leaves all previous files untouched; only a crash
    between the renames can mix old and new files (see `write_peft_folder`).

    Args:
        files: A list of `(filepath, write)` pairs, renamed in this order.
    """
    temporaries = []
    try:
        for path, write in files:
            temporary, target = _create_temporary(os.fspath(path))
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


def _create_temporary(path):
    """An empty temporary file next to `path`'s target, and that target."""
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
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
    _remove_stale(folder, name)
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
    return temporary, target


def _remove_stale(folder, name):
    """Removes the temporaries of saves of `name` that died."""
    mine = re.compile(rf"\.{re.escape(name)}\.{_HOST}-(\d+)-\w+\.tmp")
    for entry in os.listdir(folder):
        if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
            path, found = os.path.join(folder, entry), mine.fullmatch(entry)
            with contextlib.suppress(OSError):
                age = time.time() - os.lstat(path).st_mtime
                if (found and _gone(int(found[1]))) or age > _STALE_AFTER_S:
                    os.remove(path)


def _gone(pid):
    """Whether process `pid` ended (never known on Windows: age decides)."""
    if os.name == "nt" or pid == os.getpid():  # os.kill would send CTRL_C
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs as another user
        pass
    return False


def _fsync(path):
    handle = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_peft_folder(folder, config, tensors):
    """Writes a PEFT adapter folder (created if needed): weights, then config.

    The weights record `peft_config_digest(config)`, so a folder left by a
    save that died between its two renames is refused by `check_peft_pair`.
    """
    metadata = {"format": "pt", PEFT_DIGEST_KEY: peft_config_digest(config)}
    os.makedirs(folder, exist_ok=True)
    # Serialised here: `safetensors.numpy.save_file` writes through a
    # temporary file of its own, which a kill would leave behind.
    contents = {
        PEFT_WEIGHTS_NAME: safetensors.numpy.save(tensors, metadata=metadata),
        PEFT_CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n"),
    }
    write_files_atomically(
        [(os.path.join(folder, name), _writer(data)) for name, data in contents.items()]
    )


def _writer(data):
    data = data.encode() if isinstance(data, str) else data

    def write(path):
        with open(path, "wb") as file:
            file.write(data)

    return write


def peft_config_digest(config):
    """The sha256 of the settings that give a PEFT adapter's weights meaning."""
    fields = {name: config.get(name) for name in _PEFT_DIGEST_FIELDS}
    if isinstance(fields["scaling"], int | float):
        fields["scaling"] = float(fields["scaling"])
    if isinstance(fields["target_modules"], list):
        fields["target_modules"] = sorted(map(str, fields["target_modules"]))
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_peft_pair(folder, config, metadata):
    """Refuses a PEFT folder whose weights were saved with another config.

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
