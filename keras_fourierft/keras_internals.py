"""The few private Keras touches that in-place adaptation needs, in one place.

Keras's own `Dense.enable_lora` adds variables to a built layer between
`layer._tracker.unlock()` and `layer._tracker.lock()`, and KerasHub walks a
model's layers with `layer._flatten_layers()`. This package does the same,
and re-creates the per-instance `quantize` wrapper of `Layer.__new__` when a
layer's class changes (`_check_quantize_args`, `validate_and_resolve_config`).
Nothing else private is used anywhere in the package;
`tests/test_keras_internals.py` checks these names against the installed
Keras.
"""

import contextlib
import functools


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
