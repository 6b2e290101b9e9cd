"""Writing files so that a crash never leaves a damaged or mixed result.

`write_atomically` writes one file, `write_files_atomically` several that
belong together (a PEFT adapter folder's two files). Nothing here imports
Keras.
"""

import contextlib
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
# Safetensors header metadata (which PEFT and transformers never read): the
# digest of the settings of the `adapter_config.json` saved together with
# the weights, so that a folder whose two files come from different saves
# is recognised.
PEFT_DIGEST_KEY = "keras_fourierft.config_sha256"
_PEFT_DIGEST_FIELDS = (
    "peft_type",
    "n_frequency",
    "n_frequency_pattern",
    "scaling",
    "random_loc_seed",
    "target_modules",
)
# A temporary file left by a save that died is removed by a later save of
# the same file once its process is gone, or after a day.
_STALE_AFTER_S = 24 * 3600


def write_atomically(filepath, write):
    """Writes a file under a temporary name, then renames it over `filepath`.

    A failure at any point leaves a previous file at `filepath` untouched.
    The temporary file is a hidden file next to the target, named after it
    and the writing process; one left behind by a process that was killed is
    removed by the next save of the same file. The new file gets the mode of
    the file it replaces or, for a new file, the mode `open()` would give it
    (`0o666` less the umask). If `filepath` is a symbolic link, the file it
    points to is replaced and the link is kept.

    Args:
        filepath: The final path.
        write: A function of the temporary path that writes the file.
    """
    write_files_atomically([(filepath, write)])


def write_files_atomically(files):
    """Writes several files completely, then renames them into place in order.

    Every file is written (and flushed to disk) under its temporary name
    before the first rename, so running out of space or an error in any of
    the writers leaves all previous files untouched. Only a crash between
    the renames, which take microseconds, can leave the first files new and
    the later ones old; writers of files that belong together detect that
    (see `write_peft_folder`). See `write_atomically` for the temporary
    names, modes and symbolic links.

    Args:
        files: A list of `(filepath, write)` pairs, renamed in this order.
    """
    targets = [(os.path.realpath(os.fspath(path)), write) for path, write in files]
    temporaries = []
    try:
        for target, write in targets:
            _remove_stale_temporaries(target)
            temporary, mode = _create_temporary(target)
            temporaries.append(temporary)
            write(temporary)
            _flush(temporary)
            os.chmod(temporary, _existing_mode(target, mode))
        for (target, _), temporary in zip(targets, temporaries, strict=True):
            os.replace(temporary, target)
        for folder in {os.path.dirname(target) for target, _ in targets}:
            _flush_folder(folder)
    finally:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)


def write_peft_folder(folder, config, tensors):
    """Writes a PEFT adapter folder: the weights, then the config.

    The weights file records a digest of the config's settings in its
    header metadata, so a folder left by a save that died between its two
    renames (new weights, old config) is refused by `check_peft_pair`
    instead of loading the new weights with the old settings.

    Args:
        folder: The folder, created if needed.
        config: The `adapter_config.json` content, a dict.
        tensors: A dict from tensor name to numpy array.
    """
    metadata = {"format": "pt", PEFT_DIGEST_KEY: peft_config_digest(config)}
    os.makedirs(folder, exist_ok=True)
    # Serialised here and written by us: `safetensors.numpy.save_file` writes
    # through a temporary file of its own, which a kill would leave behind.
    weights = safetensors.numpy.save(tensors, metadata=metadata)
    write_files_atomically(
        [
            (
                os.path.join(folder, PEFT_WEIGHTS_NAME),
                lambda temporary: _write_bytes(temporary, weights),
            ),
            (
                os.path.join(folder, PEFT_CONFIG_NAME),
                lambda temporary: _write_json(temporary, config),
            ),
        ]
    )


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
            f"{PEFT_WEIGHTS_NAME} was saved together with different settings "
            f"than its {PEFT_CONFIG_NAME} gives (n_frequency, scaling, "
            "random_loc_seed or the target modules). A save was interrupted "
            "between its two files, or one file was replaced or edited. Save "
            "the adapter again."
        )


def _write_bytes(path, data):
    with open(path, "wb") as file:
        file.write(data)


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.write("\n")


def _host_tag():
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _temporary_pattern(target):
    name = re.escape(os.path.basename(target))
    return re.compile(rf"\.{name}\.([0-9a-f]{{8}})-(\d+)-[0-9a-f]+\.tmp")


def _create_temporary(target):
    folder, name = os.path.split(target)
    prefix = f".{name}.{_host_tag()}-{os.getpid()}-"
    while True:
        temporary = os.path.join(folder, prefix + secrets.token_hex(4) + ".tmp")
        try:
            # Mode 0o666 as for `open()`: the kernel applies the umask.
            handle = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666
            )
        except FileExistsError:
            continue
        try:
            mode = os.fstat(handle).st_mode & 0o7777
        finally:
            os.close(handle)
        return temporary, mode


_O_BINARY = getattr(os, "O_BINARY", 0)


def _existing_mode(target, default):
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        return default


def _remove_stale_temporaries(target):
    folder = os.path.dirname(target)
    pattern = _temporary_pattern(target)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    host = _host_tag()
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            age = time.time() - os.lstat(path).st_mtime
        except FileNotFoundError:
            continue
        pid = int(match.group(2))
        dead = match.group(1) == host and pid != os.getpid() and not _alive(pid)
        if dead or age > _STALE_AFTER_S:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _alive(pid):
    if os.name == "nt":
        # os.kill(pid, 0) would send CTRL_C_EVENT there; rely on the age.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _flush(path):
    handle = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _flush_folder(folder):
    # Makes the renames durable; not possible on every platform.
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
