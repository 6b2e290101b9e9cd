"""Every private Keras touch of the package, in one place.

In-place adaptation needs a few things Keras keeps private:

- `layer._tracker.unlock()`/`lock()`, to add or drop variables of a built
  layer, as Keras's own `Dense.enable_lora` does (`unlocked_tracker`);
- `layer._flatten_layers()`, to walk a model's layers as KerasHub does
  (`child_layers`);
- `layer._kernel`, the kernel variable of `Dense`/`EinsumDense` (the public
  `kernel` property returns a LoRA-merged or dequantized value)
  (`kernel_variable`);
- `layer._called`, whether a layer ran a call (`was_called`);
- the per-instance `quantize` wrapper of `Layer.__new__`
  (`_check_quantize_args`, `validate_and_resolve_config`), re-made when a
  layer's class changes (`set_layer_class`);
- `Layer._check_load_own_variables`, overridden by `CountsOwnVariables`;
- the module that prints `Model.summary()` (`keras.src.utils.summary_utils`),
  the one caller to which `ShowsAdaptedName` classes give their own name;
- `keras.src.saving.keras_saveable.KerasSaveable`, the base of objects Keras
  saves in their own group of a weights file (`Saveable`).

Nothing else private is used anywhere in the package;
`tests/test_keras_internals.py` tests each of these against the installed
Keras.
"""

import contextlib
import functools
import sys

import keras
from keras.src.saving.keras_saveable import KerasSaveable

# `Model.summary()` reads `layer.__class__.__name__` here.
_SUMMARY_MODULE = "keras.src.utils.summary_utils"


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Lets a built layer create or drop variables, as `enable_lora` does.

    Args:
        layer: A built Keras layer.

    Yields:
        None; the layer's tracker is locked again on exit.
    """
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def child_layers(layer):
    """The layers a layer tracks directly, in Keras's tracking order.

    This covers sublayers held in attributes, lists, tuples and dicts, and
    the layers of Sequential and Functional models.

    Args:
        layer: A Keras layer or model.

    Returns:
        A list of layers.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def kernel_variable(layer):
    """The kernel variable of a `Dense`/`EinsumDense` (float or quantized).

    Args:
        layer: A built `Dense` or `EinsumDense`.

    Returns:
        The `keras.Variable` Keras stores the kernel in.
    """
    return layer._kernel


def was_called(layer):
    """Whether a layer has run a call (eagerly or in a traced function).

    Args:
        layer: A Keras layer.

    Returns:
        Boolean.
    """
    return bool(getattr(layer, "_called", False))


def set_layer_class(layer, cls):
    """Changes a built layer's class in place, keeping Keras's `quantize` hook.

    `keras.layers.Layer.__new__` wraps each instance's `quantize` method
    (tracker unlock, config resolution); the wrapper holds the method of the
    class the layer was created with, so it is made again for `cls`.

    Args:
        layer: A built Keras layer.
        cls: The new class, a subclass or base class of the layer's class.
    """
    from keras.src.quantizers.quantization_config import validate_and_resolve_config

    layer.__class__ = cls
    method = cls.quantize.__get__(layer, cls)

    @functools.wraps(method)
    def quantize_wrapper(mode=None, config=None, **kwargs):
        config = validate_and_resolve_config(mode, config)
        layer._check_quantize_args(config.mode, layer.compute_dtype)
        with unlocked_tracker(layer):
            method(mode=config.mode, config=config, **kwargs)

    layer.quantize = quantize_wrapper


class Saveable(KerasSaveable):
    """An object Keras saves in its own group of a weights file.

    Held in an attribute `name` of a layer, its `save_own_variables` and
    `load_own_variables` get the store at `<layer path>/<name>/vars`; a
    layer that lacks the attribute ignores that group on loading.
    """

    def _obj_type(self):
        # Keras walks a saveable's attributes minus a skip set chosen by this
        # type; "Loss" skips a `keras.losses.Loss`'s few attributes.
        return "Loss"


class CountsOwnVariables:
    """A layer mixin whose `load_own_variables` checks the entry count itself.

    Keras's `Layer._check_load_own_variables` compares a store with all of a
    layer's variables; an adapted layer accepts a plain layer's entries too,
    and checks that in its own `load_own_variables`.
    """

    def _check_load_own_variables(self, store):
        return None


class ShowsAdaptedName(type(keras.layers.Layer)):
    """A metaclass: `Model.summary()` shows the class's own name.

    Keras keys list-held layers (Sequential and Functional models) in
    weight files by `layer.__class__.__name__`, so an adapted class keeps its
    base class's name (given as `display_base`) for every reader, and a
    layer keeps its place in weight files when it is adapted. Only the
    summary printer is given the adapted class's own name (`__qualname__`);
    the layers' `repr` uses it too.
    """

    @property
    def __name__(cls):
        caller = sys._getframe(1).f_globals.get("__name__")
        own = type.__dict__["__name__"].__get__(cls)
        if caller == _SUMMARY_MODULE:
            return own
        return cls.__dict__.get("display_base", own)
