"""FourierFT under Keras's distribution engines: placement checks, host values.

## JAX: `keras.distribution`

The package plugs into Keras's own distribution engines and replaces none of
them. A model is built (or loaded) under a distribution, `DataParallel` or
`ModelParallel`; `enable_fourierft` run under the same distribution adds
each layer's `coefficients` like any other Keras variable, so the
distribution lays them out: replicated, or as a `LayoutMap` entry matching
`<layer path>/coefficients` says. The frozen kernels keep their layout.

This module checks, before anything changes, that

- the model's variables live under the current distribution (the same
  devices and layouts that it would give them), since coefficients placed
  differently from the weights they adapt fail at training time;
- the layout the current distribution gives a coefficient vector can apply
  to it: one axis, and `n_frequency` divisible by the mesh axes it is split
  over;

and reads variables into numpy on one process of a multi-process run without
any collective (`host_value`), so that saving an adapter never waits for
other processes. Only process 0 writes files (`is_writing_process`).

On TensorFlow and torch, `keras.distribution` is not used and these checks
pass.

## TensorFlow: `tf.distribute`

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

On JAX and torch `check_strategy` and `variable_scope` do nothing.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from keras_fourierft import keras_internals


class _Placeholder:
    """What `Distribution.get_variable_layout` reads of a variable."""

    def __init__(self, path, shape):
        self.path = path
        self.shape = tuple(shape)
        self._layout = None


def current_distribution():
    """The current `keras.distribution` distribution on JAX, else None."""
    if keras.backend.backend() != "jax":
        return None
    return keras.distribution.distribution()


def coefficients_path(layer):
    """The variable path a layer's `coefficients` gets (or has).

    Keras names a variable `<layer path>/<name>`; the kernel's path gives
    the layer's, also for a layer adapted long after it was built.
    """
    return (
        keras_internals.kernel_variable(layer).path.rsplit("/", 1)[0] + "/coefficients"
    )


def check_coefficient_layout(layer, n_frequency):
    """Raises a clear error if the current distribution cannot lay out
    `n_frequency` coefficients of `layer`.

    Args:
        layer: A built `Dense`/`EinsumDense` about to be adapted.
        n_frequency: Integer, the length of its coefficient vector.
    """
    distribution = current_distribution()
    if distribution is None:
        return
    path = coefficients_path(layer)
    layout = distribution.get_variable_layout(_Placeholder(path, (n_frequency,)))
    axes = tuple(layout.axes)
    mesh = layout.device_mesh or distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    problem = None
    if len(axes) != 1:
        problem = (
            f"a layout for {len(axes)} axes, but the coefficients are a vector "
            f"of shape ({n_frequency},)"
        )
    else:
        names = axes[0] if isinstance(axes[0], tuple | list) else (axes[0],)
        split = math.prod(sizes.get(name, 1) for name in names if name is not None)
        if n_frequency % split:
            problem = (
                f"a split into {split} equal parts, but n_frequency="
                f"{n_frequency} is not divisible by {split}"
            )
    if problem is not None:
        raise ValueError(
            f"The current distribution lays out the FourierFT coefficients of "
            f"layer {layer.name!r} ({path!r}) as {axes}: {problem}. Give "
            "`<layer path>/coefficients` a one-axis layout in the LayoutMap, "
            "e.g. `layout_map['.*coefficients'] = (None,)` (replicated, the "
            "default when no entry matches) or `('model',)` with n_frequency "
            "divisible by the size of the 'model' axis."
        )


def check_placement(variables, owner):
    """Raises a clear error if variables live under another distribution.

    A variable lives under the current distribution when its value has the
    sharding the distribution gives a new variable of its path and shape.
    Without a current distribution, variables must each sit on one device.

    Args:
        variables: Keras variables (e.g. `model.weights`).
        owner: How an error message names the model or layer.
    """
    if keras.backend.backend() != "jax":
        return
    distribution = keras.distribution.distribution()
    for variable in variables:
        sharding = getattr(variable.value, "sharding", None)
        if sharding is None:
            continue
        if distribution is None:
            if len(sharding.device_set) > 1:
                raise ValueError(
                    f"Cannot enable FourierFT on {owner}: its variable "
                    f"{variable.path!r} is {_describe(sharding)}, laid out by a "
                    "`keras.distribution`, but no distribution is current, so "
                    "the coefficients would be created on one device. Enable "
                    "FourierFT inside `with distribution.scope():` of the "
                    "distribution the model was built under (or after "
                    "`keras.distribution.set_distribution(distribution)`)."
                )
            continue
        layout = distribution.get_variable_layout(
            _Placeholder(variable.path, variable.shape)
        )
        expected = layout.backend_layout
        if not sharding.is_equivalent_to(expected, len(variable.shape)):
            raise ValueError(
                f"Cannot enable FourierFT on {owner}: its variable "
                f"{variable.path!r} is {_describe(sharding)}, but the current "
                f"distribution ({type(distribution).__name__}) lays it out "
                f"{_describe(expected)}. The model's variables live under "
                "another distribution than the current one (or none), and "
                "coefficients placed under the current one would not train "
                "with them. Build or load the model under the distribution "
                "you enable FourierFT and train with: create it inside "
                "`with distribution.scope():` (or after "
                "`keras.distribution.set_distribution(distribution)`)."
            )


def _describe(sharding):
    import jax

    if isinstance(sharding, jax.sharding.NamedSharding):
        mesh = dict(sharding.mesh.shape)
        return f"sharded as {sharding.spec} over the mesh {mesh}"
    devices = sorted(str(device) for device in sharding.device_set)
    if len(devices) == 1:
        return f"on the single device {devices[0]}"
    return f"laid out over the devices {devices}"


def process_index():
    """This process's index in a multi-process JAX run (0 otherwise)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def is_writing_process():
    """Whether this process writes files: process 0, or the only process."""
    return process_index() == 0


def host_value(variable):
    """A variable's value as a numpy array, read on this process alone.

    A value sharded over devices of several processes is assembled from the
    parts this process holds, without any collective, so a call on one
    process never waits for the others. If this process does not hold the
    whole value (a variable split across processes), raises a clear error.

    Args:
        variable: A Keras variable or a tensor.

    Returns:
        A numpy array.
    """
    value = getattr(variable, "value", variable)
    whole = getattr(value, "is_fully_addressable", True)
    if keras.backend.backend() != "jax" or whole:
        return ops.convert_to_numpy(value)
    if value.is_fully_replicated:
        return np.asarray(value.addressable_data(0))
    result = np.empty(value.shape, dtype=value.dtype)
    covered = np.zeros(value.shape, dtype=bool)
    for shard in value.addressable_shards:
        result[shard.index] = np.asarray(shard.data)
        covered[shard.index] = True
    if not covered.all():
        name = getattr(variable, "path", "a value")
        raise ValueError(
            f"{name!r} is split across the devices of several processes, and "
            f"process {process_index()} holds only part of it. Files are "
            "written by process 0 from the values it holds, without waiting "
            "for other processes; lay this variable out so that every "
            "process holds all of it (replicated over the mesh axes that "
            "span processes), e.g. the default, replicated layout of the "
            "FourierFT coefficients."
        )
    return result


# TensorFlow: `tf.distribute` (see the module docstring).


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
    kernel = keras_internals.kernel_variable(layer).value
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
    owner = _owner(keras_internals.kernel_variable(layer).value, distribute)
    if owner is None:
        return contextlib.nullcontext()
    return owner.scope()
