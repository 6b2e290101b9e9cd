"""What the harness does before Keras (and TensorFlow or JAX) is imported."""

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_backend_before_import():
    """The backend Keras will load: $KERAS_BACKEND, else keras.json's."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return json.load(file).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def request_jax_host_devices(argv):
    """On JAX, `--devices N` on a CPU needs N host devices, which XLA creates
    only if `XLA_FLAGS` asks for them before JAX starts (the flag concerns
    the CPU platform only; GPUs and TPUs are used as they are)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--devices", type=int, default=1)
    devices = peek.parse_known_args(argv)[0].devices
    flags = os.environ.get("XLA_FLAGS", "")
    if (
        devices > 1
        and keras_backend_before_import() == "jax"
        and "xla_force_host_platform_device_count" not in flags
    ):
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        )


# TensorFlow's C++ libraries log a few lines (oneDNN, CUDA drivers) from
# static initializers while they load, before absl logging is initialised and
# before TF_CPP_MIN_LOG_LEVEL is consulted; two of its libraries (the core and
# the profiler plugin) carry their own copy of that code, so each line appears
# twice. While the log level asks for quiet, those lines (and only those) are
# dropped from what the imports print; everything else is passed on.
_TF_LOAD_LINES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
)


@contextlib.contextmanager
def without_tensorflow_load_lines():
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    if not level.isdigit() or int(level) < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            for line in text.splitlines(keepends=True):
                if not _TF_LOAD_LINES.search(line):
                    sys.stderr.write(line)
