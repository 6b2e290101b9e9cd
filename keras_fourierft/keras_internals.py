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
  saves in their own group of a weights file (`Saveable`);
- `saving_lib._walk_saveable` and `_get_unique_name`, to work out the path
  `.keras` saving gives each object (`saved_object_paths`);
- `MonitorCallback._set_monitor_op`, the direction of a monitored metric
  (`set_monitor_op`);
- `keras.src.models.functional.Functional`, the class of plain Functional
  models (`lists_its_layers`);
- `Model._jax_state`, set while Keras's JAX trainer runs `fit`
  (`fitting_on_jax`);
- `ReversibleEmbedding._int8_call` and its int8 variables, to give int8
  logits a straight-through input gradient
  (`give_logits_an_input_gradient`).

Nothing else private is used anywhere in the package;
`tests/test_keras_internals.py` tests each of these against the installed
Keras.
"""

import contextlib
import functools
import sys
import types

import keras
from keras import ops
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


def give_logits_an_input_gradient(layer):
    """Gives an int8 `ReversibleEmbedding`'s logits a straight-through gradient.

    Keras's int8 `ReversibleEmbedding` computes logits (`layer(x,
    reverse=True)`) from an int8-quantized `x`; the rounding has no gradient,
    so the gradient reaching every layer below it (the adapters of a causal
    LM whose token embedding is also the output projection) is wrong. This
    replaces the instance's `_int8_call` by one with the same outputs whose
    input gradient is that of the dequantized float matmul, as Keras's int8
    `Dense` does. Calls that do not reverse are unchanged. It applies to the
    layer quantized now or later; `copy.deepcopy` rebinds it to the copy.

    Args:
        layer: A `keras.layers.ReversibleEmbedding`.
    """
    layer._int8_call = types.MethodType(_straight_through_int8_call, layer)


def _straight_through_int8_call(layer, inputs, reverse=False):
    if not reverse:
        return type(layer)._int8_call(layer, inputs)
    if layer.tie_weights:
        table, scale = layer._embeddings, layer.embeddings_scale
    else:
        table = ops.transpose(layer.reverse_embeddings)
        scale = layer.reverse_embeddings_scale
    return _int8_logits(layer, inputs, ops.convert_to_tensor(table), scale)


def _int8_logits(layer, inputs, table, scale):
    # The forward computation is that of Keras's
    # `ReversibleEmbedding._int8_call`; `table` is `(vocabulary, features)`.
    dtype = layer.compute_dtype
    cap = layer.logit_soft_cap

    @ops.custom_gradient
    def logits_of(x, table, scale):
        if layer.inputs_quantizer:
            quantized, x_scale = layer.inputs_quantizer(x)
        else:
            quantized, x_scale = x, ops.ones((1,), dtype=dtype)
        logits = ops.matmul(quantized, ops.transpose(table))
        logits = ops.divide(ops.cast(logits, dtype), ops.multiply(x_scale, scale))
        if cap is not None:
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if cap is not None:
                upstream = upstream * (1.0 - ops.square(ops.divide(logits, cap)))
            float_table = ops.divide(
                ops.cast(table, dtype), ops.expand_dims(ops.cast(scale, dtype), -1)
            )
            return ops.matmul(upstream, float_table), None, None

        return logits, grad

    return logits_of(inputs, table, ops.convert_to_tensor(scale))


def saved_object_paths(model):
    """The path Keras's `.keras` saving gives each object of a model.

    `model.save()` walks the model's attributes (Sequential and Functional
    `layers` first, then `dir()` order, private names last) and names
    container items by snake-case class name and index; each object gets
    the path of its first visit, and its assets are saved in the directory
    of that name (`keras.src.saving.saving_lib._save_state`). This walks
    the same tree.

    Args:
        model: A Keras model or layer.

    Returns:
        A dict `{path: object}`; the model itself has the path `""`.
    """
    from keras.src.saving import saving_lib
    from keras.src.saving.keras_saveable import KerasSaveable
    from keras.src.utils import naming

    paths, seen = {}, set()

    def visit(obj, path):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        paths[path] = obj
        for attr, child in saving_lib._walk_saveable(obj):
            child_path = f"{path}/{attr}" if path else attr
            if isinstance(child, KerasSaveable):
                visit(child, child_path)
            elif isinstance(child, (list, dict, tuple)):
                visit_container(child, child_path, set())

    def visit_container(container, path, done):
        if id(container) in done:
            return
        done.add(id(container))
        used = {}
        items = container.values() if isinstance(container, dict) else container
        for item in items:
            if isinstance(item, KerasSaveable):
                name = naming.to_snake_case(item.__class__.__name__)
                visit(item, f"{path}/{saving_lib._get_unique_name(name, used)}")
            elif isinstance(item, (list, dict, tuple)):
                name = saving_lib._get_unique_name("container", used)
                visit_container(item, f"{path}/{name}", done)

    visit(model, "")
    return paths


def set_monitor_op(callback):
    """Sets a Keras `MonitorCallback`'s comparison (`monitor_op`) for its mode.

    `"auto"` minimises losses and follows the direction of the compiled
    metric named by `monitor` (`MonitorCallback._set_monitor_op`).

    Args:
        callback: A `keras.callbacks.ModelCheckpoint` with a model set.
    """
    callback._set_monitor_op()


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


def lists_its_layers(layer):
    """Whether a layer's config lists every layer it holds, with its config.

    True for plain `keras.Sequential` and Functional models (not their
    subclasses, such as KerasHub backbones, which rebuild their layers from
    their own arguments).

    Args:
        layer: A Keras layer or model.

    Returns:
        A boolean.
    """
    from keras.src.models.functional import Functional

    return type(layer) in (keras.Sequential, Functional)


def fitting_on_jax(model):
    """Whether `model.fit` is running on the JAX backend (in a callback).

    Keras's JAX trainer holds the training state in `model._jax_state`
    between the steps of a `fit`, with the optimizer built for the trainable
    variables the fit began with.

    Args:
        model: A Keras model or layer.

    Returns:
        A boolean.
    """
    return (
        keras.backend.backend() == "jax"
        and getattr(model, "_jax_state", None) is not None
    )
