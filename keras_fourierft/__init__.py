"""FourierFT for Keras: parameter-efficient fine-tuning in the spectral domain."""

import importlib
import warnings

from keras_fourierft.adapters import load_fourierft_weights
from keras_fourierft.adapters import save_fourierft_weights
from keras_fourierft.callbacks import FourierFTCheckpoint
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.layers import FourierDense
from keras_fourierft.layers import FourierEinsumDense
from keras_fourierft.peft import load_peft_adapter
from keras_fourierft.peft import save_peft_adapter
from keras_fourierft.saving import load_model
from keras_fourierft.serving import AdapterBank
from keras_fourierft.spectral import frequency_locations
from keras_fourierft.surgery import enable_fourierft
from keras_fourierft.surgery import fourierft_layers
from keras_fourierft.surgery import merge_fourierft
from keras_fourierft.surgery import set_fourierft_enabled
from keras_fourierft.surgery import unload_fourierft
from keras_fourierft.surgery import unmerge_fourierft
from keras_fourierft.version import __version__

__all__ = [
    "FourierFTConfig",
    "FourierDense",
    "FourierEinsumDense",
    "enable_fourierft",
    "set_fourierft_enabled",
    "merge_fourierft",
    "unmerge_fourierft",
    "unload_fourierft",
    "save_fourierft_weights",
    "load_fourierft_weights",
    "save_peft_adapter",
    "load_peft_adapter",
    "AdapterBank",
    "FourierFTCheckpoint",
    "load_model",
    "frequency_locations",
    "fourierft_layers",
]


def _adapt_layer(layer, config=None, **settings):
    """0.2's `adapt_layer`: adapts one layer in place and returns it."""
    from keras_fourierft import surgery

    if config is None:
        config = FourierFTConfig(**settings)
    elif settings:
        raise ValueError("Pass either `config` or settings, not both.")
    return surgery.adapt_in_place(layer, config)


def _remove_adapter(layer, merge=True):
    """0.2's `remove_adapter`: unloads one layer's adapter and returns it."""
    from keras_fourierft import surgery

    return surgery.remove_in_place(layer, merge=merge)


def _fourier_layers(model):
    """0.2's `fourier_layers`: `(path, layer)` pairs of the adapted layers."""
    return list(fourierft_layers(model).items())


# Deprecated 0.2 names: (module, attribute, what to use instead).
_DEPRECATED = {
    "adapt_layer": (__name__, "_adapt_layer", "enable_fourierft(layer, ...)"),
    "remove_adapter": (__name__, "_remove_adapter", "unload_fourierft(layer)"),
    "fourier_layers": (__name__, "_fourier_layers", "fourierft_layers(model)"),
    "walk_layers": ("keras_fourierft.surgery", "_walk_layers", "fourierft_layers"),
    "read_peft_adapter": (
        "keras_fourierft.peft",
        "read_peft_adapter",
        "load_peft_adapter",
    ),
    "spectral_delta": (
        "keras_fourierft.spectral",
        "spectral_delta",
        "keras_fourierft.spectral.spectral_delta",
    ),
    "kernel_view": (
        "keras_fourierft.layers",
        "kernel_view",
        "keras_fourierft.spectral.kernel_view",
    ),
    "default_target_layer_names": (
        "keras_fourierft.surgery",
        "_default_target_layer_names",
        "the default of `enable_fourierft` (no `target_layer_names`)",
    ),
    "reset_compiled_functions": (
        "keras_fourierft.surgery",
        "_reset_compiled_functions",
        "nothing: the package resets them itself",
    ),
    "FourierFTSummary": (
        "keras_fourierft.surgery",
        "FourierFTSummary",
        "the object `enable_fourierft` returns",
    ),
}


def __getattr__(name):
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute, instead = _DEPRECATED[name]
    warnings.warn(
        f"`keras_fourierft.{name}` is deprecated and will be removed in the "
        f"next release; use {instead}.",
        DeprecationWarning,
        stacklevel=2,
    )
    module = importlib.import_module(module)
    if name == "kernel_view":
        # It moves to the math module, `keras_fourierft.spectral`.
        spectral = importlib.import_module("keras_fourierft.spectral")
        module = spectral if hasattr(spectral, attribute) else module
    return getattr(module, attribute)
