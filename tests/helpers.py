"""Backend-specific helpers for the tests (gradients, weight snapshots)."""

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
