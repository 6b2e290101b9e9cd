"""Adapter variables under `tf.distribute` strategies.

Keras on TensorFlow trains a model under the `tf.distribute.Strategy` its
variables were created in (`MirroredStrategy` makes each variable a
`MirroredVariable`, one copy per replica). The coefficients an adapter adds
to a built layer must belong to the same strategy as that layer's kernel,
or `fit` fails when the optimizer meets variables of two strategies. This
module decides, per layer, in which scope the new variables are created:

- inside the scope of the strategy that owns the kernel, or outside any
  scope on a model built outside any: in the current scope, which is the
  kernel's;
- outside any scope, on a model built inside one: in the scope of the
  kernel's strategy, entered for them, so enabling FourierFT outside
  `strategy.scope()` works;
- inside the scope of a strategy that does not own the kernel (a model
  built outside any scope, or under another strategy): a `ValueError`
  before anything changes. Keras itself cannot train such a model under
  the current strategy.

On JAX and torch this module does nothing (on JAX, `keras.distribution`
lays out a new variable as the distribution current at its creation says).
"""

import contextlib

import keras


def _strategy_api():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute


def _owner(variable, distribute):
    """The strategy that created a `tf.Variable`, or None (no strategy)."""
    if isinstance(variable, distribute.DistributedValues):
        return variable.distribute_strategy
    return None


def check_strategy(layer):
    """Raises if `layer` cannot get adapter variables in the current scope.

    Args:
        layer: A built `Dense` or `EinsumDense`.
    """
    distribute = _strategy_api()
    if distribute is None or not distribute.has_strategy():
        return
    current = distribute.get_strategy()
    kernel = layer._kernel.value
    if current.extended.variable_created_in_scope(kernel):
        return
    owner = _owner(kernel, distribute)
    scope = f"the scope of a {type(current).__name__}"
    if owner is None:
        raise ValueError(
            f"Layer {layer.name!r} was built outside any tf.distribute "
            f"strategy, but FourierFT is being enabled inside {scope}. Keras "
            "trains a model under the strategy its variables were created in, "
            "so this model cannot train under the current strategy: build (or "
            "load) the model inside `strategy.scope()`, then enable FourierFT "
            "and compile there too. Nothing was changed."
        )
    raise ValueError(
        f"Layer {layer.name!r} was built under a {type(owner).__name__} "
        f"that is not the current strategy (a {type(current).__name__} whose "
        "scope is entered); the adapter's coefficients must belong "
        "to the strategy that owns the layer's kernel. Enable FourierFT "
        "inside the scope of the strategy that built the model, or outside "
        "any scope (the coefficients then join the model's strategy). "
        "Nothing was changed."
    )


def variable_scope(layer):
    """The scope in which to create a built layer's adapter variables.

    Args:
        layer: A built `Dense` or `EinsumDense` that passed `check_strategy`.

    Returns:
        A context manager: the scope of the strategy that owns the layer's
        kernel when none is entered, else a no-op.
    """
    distribute = _strategy_api()
    if distribute is None or distribute.has_strategy():
        return contextlib.nullcontext()
    owner = _owner(layer._kernel.value, distribute)
    if owner is None:
        return contextlib.nullcontext()
    return owner.scope()
