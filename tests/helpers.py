"""Test helpers: gradients, weight snapshots, child processes, PEFT fixtures."""

import functools
import json
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np


def gradient(loss_fn, variable):
    """Returns d loss_fn() / d variable as a numpy array on any backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, variable.value).numpy()
    if backend == "jax":
        import jax

        def pure(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return loss_fn()

        return np.asarray(jax.grad(pure)(variable.value))
    import torch

    value = variable.value
    value.grad = None
    loss = loss_fn()
    (grad,) = torch.autograd.grad(loss, [value])
    return grad.detach().cpu().numpy()


def snapshot(model):
    """Copies of all weights of a model, by variable path."""
    return {v.path + f"#{i}": np.array(v.numpy()) for i, v in enumerate(model.weights)}


def assert_same_weights(before, after):
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


FILES_MODULE = str(Path(__file__).parent.parent / "keras_fourierft" / "files.py")
# Loads keras_fourierft/files.py alone (it imports no Keras), so a child
# process starts in a fraction of a second.
LOAD_FILES_MODULE = (
    "import importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location('files', {FILES_MODULE!r})\n"
    "files = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(files)\n"
)


def start_child(code, *args):
    """Starts `python -c code args...`; returns it once it printed `ready`."""
    child = subprocess.Popen(
        [sys.executable, "-c", LOAD_FILES_MODULE + code, *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline()
    assert line.strip() == "ready", f"child failed to start: {line!r}"
    return child


def kill(child):
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()


PEFT_FIXTURES = Path(__file__).parent / "fixtures" / "peft"


@functools.cache
def peft_layers():
    """The arrays PEFT computed for the layer cases (fixtures/peft)."""
    return dict(np.load(PEFT_FIXTURES / "layers.npz"))


@functools.cache
def peft_cases():
    """The layer cases of fixtures/peft: shapes, seeds and scalings."""
    return json.loads((PEFT_FIXTURES / "README.json").read_text())["layer_cases"]
