"""FourierFT layers: `Dense` and `EinsumDense` adapted in place.

`FourierDense` and `FourierEinsumDense` are the Keras layers with a frozen
kernel and `n_frequency` trainable spectral coefficients. A built `Dense` or
`EinsumDense` becomes one in place with `adapt_layer` (what
`enable_fourierft` does to every target), the way `Dense.enable_lora` adapts
a layer: the same object, its name, variables, variable paths and place in
the model stay as they were; a `coefficients` variable is added and `call`
adds the update.
"""

import collections
import functools
import hashlib
import json
import math
import os

import keras
import numpy as np
from keras import ops

from keras_fourierft import distribution
from keras_fourierft import keras_internals
from keras_fourierft import spectral
from keras_fourierft.config import SPECTRUM_FIELDS
from keras_fourierft.config import FourierFTConfig

QUANTIZATION_MODES = (None, "int8", "int4", "float8")


def kernel_view(layer_or_equation, kernel_shape):
    """Describes the 2-D `(input features, output features)` view of a kernel.

    A `Dense` kernel is already `(input, output)`. For an `EinsumDense` the
    kernel axes that also appear in the input term are input features, those
    that also appear in the output term are output features; each group is
    flattened in the kernel's own axis order. For Keras's attention layers
    this equals the transposed weight of the matching Hugging Face
    `nn.Linear`, e.g. BERT's query `(hidden, heads, head_dim)` gives
    `hidden x heads*head_dim`, Gemma's query `(heads, hidden, head_dim)` gives
    `hidden x heads*head_dim`.

    Args:
        layer_or_equation: A `Dense` layer, an `EinsumDense` layer, or an
            einsum equation string such as `"abc,cde->abde"` (None for a
            `Dense` kernel).
        kernel_shape: Tuple, the kernel's shape.

    Returns:
        A dict with `input_axes`, `output_axes` (kernel axis indices),
        `in_features`, `out_features` (integers) and `permutation` (the kernel
        axis order that puts input axes first).

    Example:

    >>> kernel_view("btd,ndh->btnh", (12, 768, 64))["in_features"]
    768
    """
    equation = layer_or_equation
    if isinstance(layer_or_equation, keras.layers.Layer):
        equation = getattr(layer_or_equation, "equation", None)
    kernel_shape = tuple(int(d) for d in kernel_shape)
    if equation is None:
        input_axes, output_axes = [0], [1]
    else:
        input_axes, output_axes = _einsum_feature_axes(equation)
    if len(input_axes) + len(output_axes) != len(kernel_shape):
        raise ValueError(
            f"Kernel shape {kernel_shape} does not match the equation {equation!r}."
        )
    return {
        "input_axes": input_axes,
        "output_axes": output_axes,
        "in_features": math.prod(kernel_shape[i] for i in input_axes),
        "out_features": math.prod(kernel_shape[i] for i in output_axes),
        "permutation": input_axes + output_axes,
    }


def _split_equation(equation):
    try:
        operands, output = equation.replace(" ", "").split("->")
        input_term, kernel_term = operands.split(",")
    except ValueError:
        raise ValueError(
            f"Cannot read the einsum equation {equation!r}: expected the form "
            "'<input>,<kernel>-><output>'."
        ) from None
    return input_term, kernel_term, output


def _einsum_feature_axes(equation):
    input_term, kernel_term, output = _split_equation(equation)
    input_term = input_term.replace("...", "")
    output = output.replace("...", "")
    input_axes, output_axes = [], []
    for axis, letter in enumerate(kernel_term):
        in_input, in_output = letter in input_term, letter in output
        if in_input and not in_output:
            input_axes.append(axis)
        elif in_output and not in_input:
            output_axes.append(axis)
        else:
            raise ValueError(
                f"FourierFT needs every kernel axis of the einsum equation "
                f"{equation!r} to be either an input feature axis (shared with "
                "the input only) or an output feature axis (shared with the "
                f"output only); axis {letter!r} is neither."
            )
    if not input_axes or not output_axes:
        raise ValueError(
            f"The einsum equation {equation!r} has no input or no output "
            "feature axis in its kernel; FourierFT needs both."
        )
    for letter in input_term:
        if letter not in kernel_term and letter not in output:
            raise ValueError(
                f"The einsum equation {equation!r} sums over input axis "
                f"{letter!r}, which is not a kernel axis; FourierFT cannot "
                "apply its update to such a layer."
            )
    return input_axes, output_axes


class _RowLayout:
    """Moves an einsum input to `(tokens, d1)` rows and `(tokens, d2)` back.

    Token axes are the input axes that are not kernel axes; features are
    flattened in the kernel's axis order, as `kernel_view` does.
    """

    def __init__(self, equation, kernel_shape, rank):
        input_term, kernel_term, output = _split_equation(equation)
        if "..." in input_term:
            extra = rank - len(input_term.replace("...", ""))
            fill = "".join(chr(ord("A") + i) for i in range(extra))
            input_term = input_term.replace("...", fill)
            output = output.replace("...", fill)
        tokens = [letter for letter in input_term if letter not in kernel_term]
        features_in = [letter for letter in kernel_term if letter in input_term]
        features_out = [letter for letter in kernel_term if letter in output]
        sizes = dict(zip(kernel_term, kernel_shape, strict=True))
        self.input_permutation = [
            input_term.index(letter) for letter in tokens + features_in
        ]
        self.token_axes = [input_term.index(letter) for letter in tokens]
        self.token_count = len(tokens)
        self.output_sizes = [sizes[letter] for letter in features_out]
        current = tokens + features_out
        self.output_permutation = [current.index(letter) for letter in output]

    def to_rows(self, inputs, in_features):
        x = _transpose(inputs, self.input_permutation)
        token_shape = ops.shape(x)[: self.token_count]
        return ops.reshape(x, (-1, in_features)), token_shape

    def from_rows(self, rows, token_shape):
        y = ops.reshape(rows, tuple(token_shape) + tuple(self.output_sizes))
        return _transpose(y, self.output_permutation)


@functools.cache
def _row_layout(equation, kernel_shape, rank):
    # Cached: on eager backends every call asks for it.
    return _RowLayout(equation, kernel_shape, rank)


def _transpose(x, permutation):
    if list(permutation) == sorted(permutation):
        return x
    return ops.transpose(x, permutation)


def float_kernel_shape(layer):
    """The shape of a layer's kernel in float, also when it is quantized.

    Args:
        layer: A built `Dense` or `EinsumDense`.

    Returns:
        A tuple of integers.
    """
    if isinstance(layer, keras.layers.EinsumDense):
        shape = getattr(layer, "original_kernel_shape", None)
        if shape is not None:
            return tuple(int(d) for d in shape)
    elif layer.quantization_mode == "int4":
        return (int(layer._kernel.shape[0]), int(layer.units))
    return tuple(int(d) for d in layer._kernel.shape)


def check_adaptable(layer, config=None):
    """Raises a clear error if `layer` cannot be adapted in place.

    On JAX under a `keras.distribution`, the layer's variables must live
    under the current distribution, and the layout it gives the
    coefficients must apply to a vector of `n_frequency` values (see
    `keras_fourierft.distribution`).

    Args:
        layer: Any Keras layer.
        config: Optional `FourierFTConfig`; if given, its `n_frequency` must
            fit the layer's weight.
    """
    if isinstance(layer, _FourierFTMixin):
        raise ValueError(
            f"Layer {layer.name!r} already has a FourierFT adapter. Adapt a "
            "layer once; to change its adapter, call "
            "`keras_fourierft.remove_adapter(layer)` first."
        )
    if type(layer) not in _ADAPTED_CLASS:
        if isinstance(layer, tuple(_ADAPTED_CLASS)):
            raise TypeError(
                f"Layer {layer.name!r} is a {type(layer).__name__}, a subclass "
                "of Dense/EinsumDense with its own class. FourierFT adapts "
                "exact `keras.layers.Dense` and `keras.layers.EinsumDense` "
                "layers in place, since a subclass may compute something "
                "else in `call`. Target another layer, or build your layer "
                "from `keras_fourierft.FourierDense`."
            )
        raise TypeError(
            "FourierFT adapts `keras.layers.Dense` and `keras.layers.EinsumDense`"
            f" layers. Received layer {layer.name!r} of type "
            f"{type(layer).__name__}."
        )
    if not layer.built:
        raise ValueError(
            f"Layer {layer.name!r} is not built. Build it (call it on data or "
            "build the model) before adding a FourierFT adapter."
        )
    if getattr(layer, "lora_enabled", False) or getattr(layer, "lora_rank", None):
        raise ValueError(
            f"Layer {layer.name!r} has LoRA enabled. FourierFT and LoRA cannot "
            "be stacked on one layer: use a layer without `lora_rank`."
        )
    if layer.quantization_mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Layer {layer.name!r} is quantized with "
            f"{layer.quantization_mode!r}; FourierFT runs on float, 'int8', "
            "'int4' and 'float8' bases. Quantize with one of those, or add "
            "the adapter to the float model."
        )
    if layer.kernel_constraint is not None:
        raise ValueError(
            f"Layer {layer.name!r} has a kernel_constraint. FourierFT adds an "
            "update to the kernel that a constraint cannot see, so it would "
            "be silently violated. Remove the constraint first."
        )
    distribution.check_placement(layer.weights, f"layer {layer.name!r}")
    if config is not None:
        _check_size(layer, config, float_kernel_shape(layer))
        distribution.check_coefficient_layout(layer, config.n_frequency)
    distribution.check_strategy(layer)


def adapt_layer(layer, config=None, **settings):
    """Adds a FourierFT adapter to a built `Dense`/`EinsumDense`, in place.

    The layer object stays the same (its class becomes `FourierDense` or
    `FourierEinsumDense`): its name, variables, variable paths and place in
    every model and container that holds it are unchanged. Its kernel and
    bias are frozen and a trainable `coefficients` variable is added. Works
    on float and on `int8`/`int4`/`float8`-quantized layers.

    Under `tf.distribute` the coefficients are created under the strategy
    that owns the layer's kernel (also when called outside its scope); inside
    the scope of a strategy that does not own the kernel this raises a
    `ValueError` and changes nothing.

    Args:
        layer: A built `keras.layers.Dense` or `keras.layers.EinsumDense`.
        config: Optional `FourierFTConfig`.
        **settings: `FourierFTConfig` fields, used when `config` is None
            (e.g. `n_frequency=1000, scaling=150.0`).

    Returns:
        The same layer, adapted.

    Example:

    ```python
    dense = keras.layers.Dense(64)
    dense.build((None, 32))
    keras_fourierft.adapt_layer(dense, n_frequency=200)
    y = dense(np.ones((2, 32)))
    ```
    """
    if config is None:
        config = FourierFTConfig(**settings)
    elif settings:
        raise ValueError("Pass either `config` or settings, not both.")
    check_adaptable(layer, config)
    with distribution.variable_scope(layer), keras_internals.unlocked_tracker(layer):
        keras_internals.set_layer_class(layer, _ADAPTED_CLASS[type(layer)])
        layer._init_fourierft(config)
        layer._build_fourierft()
    return layer


def remove_adapter(layer, merge=True):
    """Turns an adapted layer back into a plain `Dense`/`EinsumDense`, in place.

    Args:
        layer: A `FourierDense` or `FourierEinsumDense`.
        merge: If True the kernel keeps `W + delta_W` (the layer computes what
            the adapted layer computed); if False the original `W` comes back.

    Returns:
        The same layer, now plain.
    """
    if not isinstance(layer, _FourierFTMixin):
        raise ValueError(f"Layer {layer.name!r} has no FourierFT adapter.")
    if merge and layer.adapter_enabled:
        layer.merge(safe_merge=True)
    else:
        layer.unmerge(force=True)
    with keras_internals.unlocked_tracker(layer):
        del layer.coefficients
        keras_internals.set_layer_class(layer, _PLAIN_CLASS[type(layer)])
        for name in _STATE:
            if name in layer.__dict__:
                object.__delattr__(layer, name)
    return layer


_STATE = (
    "fourierft_config",
    "locations",
    "model_path",
    "_view",
    "_delta_plan",
    "_activation_plan",
    "_enabled",
    "_merged",
)


class _Merged(collections.namedtuple("_Merged", "original digest trainable")):
    """A merged layer's original kernel, a digest of the merged one, and
    whether its coefficients were trainable before the merge."""


def _setting(name, doc):
    return property(lambda self: getattr(self.fourierft_config, name), doc=doc)


class _FourierFTMixin:
    """What `FourierDense` and `FourierEinsumDense` share."""

    def __init__(self, *args, **kwargs):
        if args and isinstance(args[0], keras.layers.Layer):
            raise TypeError(
                f"{type(self).__qualname__} is a Keras layer built from its "
                "own arguments (units/equation, then FourierFT settings). To "
                "add an adapter to an existing layer, call "
                "`keras_fourierft.adapt_layer(layer, n_frequency=...)`: it "
                "adapts the layer in place."
            )
        config = FourierFTConfig(
            **{
                name: kwargs.pop(name)
                for name in FourierFTConfig.__dataclass_fields__
                if name in kwargs
            }
        )
        super().__init__(*args, **kwargs)
        self._init_fourierft(config)

    def build(self, input_shape):
        super().build(input_shape)
        _check_size(self, self.fourierft_config, float_kernel_shape(self))
        distribution.check_coefficient_layout(self, self.n_frequency)
        self._build_fourierft()

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantizes the base kernel; the adapter stays in float32."""
        if self.merged:
            raise ValueError(
                f"Layer {self.name!r} has its FourierFT adapter merged; "
                "unmerge before quantizing."
            )
        if mode not in QUANTIZATION_MODES[1:]:
            raise ValueError(
                f"Layer {self.name!r} has a FourierFT adapter, which runs on "
                f"'int8', 'int4' and 'float8' bases; mode {mode!r} is not "
                "supported. Quantize the base model before adding the "
                "adapter, with one of those modes."
            )
        super().quantize(mode, type_check=False, config=config)

    def _init_fourierft(self, config):
        self.fourierft_config = config
        self.locations = None
        self.model_path = None
        self._enabled = True
        self._merged = None

    def _build_fourierft(self):
        config = self.fourierft_config
        shape = float_kernel_shape(self)
        view = kernel_view(getattr(self, "equation", None), shape)
        self._view = view
        self.locations = spectral.frequency_locations(
            view["out_features"],
            view["in_features"],
            config.n_frequency,
            seed=config.seed,
            sampling=config.sampling,
            center_frequency=config.center_frequency,
            bandwidth=config.bandwidth,
        )
        indices = spectral.kernel_indices(self.locations)
        size = (view["in_features"], view["out_features"])
        self._delta_plan = _to_tensors(spectral.spectral_plan(indices, size))
        self._activation_plan = _to_tensors(spectral.activation_plan(indices, size))
        self._kernel.trainable = False
        if self.bias is not None:
            self.bias.trainable = False
        self.coefficients = self.add_weight(
            name="coefficients",
            shape=(config.n_frequency,),
            initializer=_stored_initializer(config),
            dtype="float32",
            trainable=True,
        )

    # Settings, read-only views of `fourierft_config`.
    n_frequency = _setting("n_frequency", "Integer, the number of coefficients.")
    scaling = _setting("scaling", "Float, the factor `alpha` of the update.")
    seed = _setting("seed", "Integer, the seed of the frequency locations.")
    sampling = _setting("sampling", '`"uniform"` or `"frequency_biased"`.')
    center_frequency = _setting("center_frequency", "Float or None, `f_c`.")
    bandwidth = _setting("bandwidth", "Float or None, `W`.")
    lr_multiplier = _setting(
        "lr_multiplier", "Float, the factor between stored and used coefficients."
    )

    @property
    def compute(self):
        """`"auto"`, `"dense"` or `"activation"`, see the class docstring."""
        return self.fourierft_config.compute

    @compute.setter
    def compute(self, value):
        self.fourierft_config = self.fourierft_config.replace(compute=value)

    # State.

    @property
    def merged(self):
        """Whether delta_W is currently folded into the kernel."""
        return self._merged is not None

    @property
    def adapter_enabled(self):
        """Whether `call` applies the update; settable (not while merged)."""
        return self._enabled

    @adapter_enabled.setter
    def adapter_enabled(self, value):
        value = bool(value)
        if value == self._enabled:
            return
        if self.merged:
            raise ValueError(
                f"Layer {self.name!r}: the adapter is merged into the kernel, "
                "so it cannot be turned off. Call `unmerge()` first."
            )
        self._enabled = value

    @property
    def spectrum(self):
        """The effective spectral coefficients, `lr_multiplier * coefficients`."""
        return ops.multiply(self.coefficients, self.lr_multiplier)

    def set_spectrum(self, values):
        """Assigns effective spectral coefficients (the inverse of `spectrum`).

        Args:
            values: Array-like of shape `(n_frequency,)`, finite.
        """
        values = self._checked_coefficients(values, "spectrum")
        was_merged = self.merged
        self.unmerge()
        self.coefficients.assign(values / self.lr_multiplier)
        if was_merged:
            self.merge()

    def _checked_coefficients(self, values, what):
        values = np.asarray(values, dtype="float32")
        if values.shape != (self.n_frequency,):
            raise ValueError(
                f"Layer {self.name!r} expects the {what} to have shape "
                f"({self.n_frequency},). Received shape {values.shape}."
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Layer {self.name!r}: NaN or Inf values in the {what}.")
        return values

    def adapter_config(self):
        """The settings that define this adapter's spectrum.

        Returns:
            A dict with `in_features`, `out_features` (the 2-D view) and
            `n_frequency`, `scaling`, `seed`, `sampling`, `center_frequency`,
            `bandwidth`.
        """
        config = {
            "in_features": self._view["in_features"],
            "out_features": self._view["out_features"],
        }
        config.update({name: getattr(self, name) for name in SPECTRUM_FIELDS})
        return config

    # The update.

    def delta_weight(self):
        """Returns delta_W in the kernel's own shape, as a float32 tensor."""
        view = self._view
        delta = self._delta_2d()
        equation = getattr(self, "equation", None)
        if equation is None:
            return delta
        shape = float_kernel_shape(self)
        permutation = view["permutation"]
        delta = ops.reshape(delta, [shape[axis] for axis in permutation])
        return ops.transpose(delta, np.argsort(permutation).tolist())

    def _delta_2d(self):
        view = self._view
        return spectral.delta_from_plan(
            self.spectrum,
            self._delta_plan,
            (view["in_features"], view["out_features"]),
            self.scaling,
        )

    def _adapter_active(self, inputs):
        # An empty input gets no update: torch's FFT refuses empty tensors,
        # and so does TensorFlow's `ops.add` with two empty `(0, units)` ones.
        return self._enabled and not self.merged and 0 not in tuple(inputs.shape)

    def _compute_mode(self, inputs):
        if self.compute != "auto":
            return self.compute
        tokens = 1
        for axis in self._token_axes(len(inputs.shape)):
            size = inputs.shape[axis]
            if size is None:
                tokens = None
                break
            tokens *= int(size)
        return spectral.choose_compute(
            tokens,
            self._view["in_features"],
            self._view["out_features"],
            self.n_frequency,
        )

    def _adapter_rows(self, rows, mode):
        """`rows @ delta_W` for `(tokens, d1)` rows, float32."""
        view = self._view
        shape = (view["in_features"], view["out_features"])
        if mode == "activation":
            return spectral.spectral_matmul(
                rows, self.spectrum, self._activation_plan, shape, self.scaling
            )
        return ops.matmul(ops.cast(rows, "float32"), self._delta_2d())

    def _finish(self, x):
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def call(self, inputs, training=None):
        if not self._adapter_active(inputs):
            return super().call(inputs, training=training)
        if self._compute_mode(inputs) == "dense":
            kernel = ops.add(ops.cast(self.kernel, "float32"), self.delta_weight())
            x = self._linear(inputs, ops.cast(kernel, self.compute_dtype))
        else:
            rows, restore = self._rows(inputs)
            update = self._adapter_rows(rows, "activation")
            x = ops.add(
                self._linear(inputs, self.kernel),
                restore(ops.cast(update, self.compute_dtype)),
            )
        return self._finish(x)

    def quantized_call(self, inputs, training=None):
        if not self._adapter_active(inputs):
            return super().quantized_call(inputs, training=training)
        activation = self.activation
        self.activation = None
        try:
            x = super().quantized_call(inputs, training=training)
        finally:
            self.activation = activation
        rows, restore = self._rows(inputs)
        update = self._adapter_rows(rows, self._compute_mode(inputs))
        x = ops.add(x, restore(ops.cast(update, x.dtype)))
        if self.activation is not None:
            x = self.activation(x)
        return x

    # Merging.

    def merge(self, safe_merge=False):
        """Folds delta_W into the kernel for zero-overhead inference.

        While merged the layer costs exactly what the plain layer costs, the
        coefficients are not trainable (training them would not change the
        output) and the adapter cannot be turned off; `unmerge()` restores
        the original kernel bit for bit. Merging twice is a no-op.

        Args:
            safe_merge: If True, check the merged kernel for NaN/Inf first and
                raise (leaving the layer unchanged) instead of merging.
        """
        if self.merged:
            return
        if self.quantization_mode is not None:
            raise ValueError(
                f"Layer {self.name!r} has a {self.quantization_mode!r}-"
                "quantized kernel, into which FourierFT does not merge (the "
                "update would be lost to rounding). Keep the adapter "
                "unmerged (its cost is small), or merge into the float model "
                "and quantize afterwards."
            )
        if not self._enabled:
            raise ValueError(
                f"Layer {self.name!r}: the adapter is turned off; turn it on "
                "before merging."
            )
        original = ops.convert_to_numpy(self._kernel).copy()
        merged = self._merged_kernel_value(original, safe_merge)
        self._kernel.assign(merged)
        self._merged = _Merged(original, _digest(merged), self.coefficients.trainable)
        self.coefficients.trainable = False

    def unmerge(self, force=False):
        """Restores the original kernel exactly after `merge()`.

        Args:
            force: Restore even if the kernel was changed while merged (e.g.
                by `set_weights`); by default that raises, since restoring
                would silently undo the change.
        """
        if not self.merged:
            return
        current = ops.convert_to_numpy(self._kernel)
        if not force and _digest(current) != self._merged.digest:
            raise ValueError(
                f"Layer {self.name!r}: its kernel was changed while the "
                "adapter was merged into it (e.g. by `set_weights`). "
                "Unmerging would overwrite that change with the kernel saved "
                "at merge time. Call `unmerge(force=True)` to do so anyway."
            )
        self._kernel.assign(self._merged.original)
        self.coefficients.trainable = self._merged.trainable
        self._merged = None

    def _merged_kernel_value(self, original, safe_merge):
        delta = ops.convert_to_numpy(self.delta_weight())
        merged = (original.astype("float32") + delta).astype(original.dtype)
        if safe_merge and not np.all(np.isfinite(merged)):
            raise ValueError(
                f"Merging the FourierFT update into layer {self.name!r} gives "
                "non-finite values (NaN or Inf); the kernel was left "
                "unchanged. Check the coefficients for divergence."
            )
        return merged

    def original_kernel(self):
        """Returns the frozen pretrained kernel `W` as a numpy array."""
        if self.merged:
            return self._merged.original.copy()
        return ops.convert_to_numpy(self._kernel)

    def to_plain_layer(self, safe_merge=True):
        """Returns a new plain `Dense`/`EinsumDense` holding `W + delta_W`.

        The result has this layer's plain config and name, needs nothing
        from this package and is independent of this layer's variables. A
        disabled adapter exports the original kernel.

        Args:
            safe_merge: If True (default), refuse non-finite merged kernels.

        Returns:
            A built `keras.layers.Dense` or `keras.layers.EinsumDense`.
        """
        if self.quantization_mode is not None:
            raise ValueError(
                f"Layer {self.name!r} is quantized; export the float model."
            )
        original = self.original_kernel()
        kernel = original
        if self._enabled:
            kernel = self._merged_kernel_value(original, safe_merge)
        plain_class = _PLAIN_CLASS[type(self)]
        layer = plain_class.from_config(self._plain_config())
        layer.build(self._plain_input_shape())
        layer.kernel.assign(kernel)
        if self.bias is not None:
            layer.bias.assign(ops.convert_to_numpy(self.bias))
        return layer

    def _plain_input_shape(self):
        kernel_shape = float_kernel_shape(self)
        equation = getattr(self, "equation", None)
        if equation is None:
            return (None, kernel_shape[0])
        input_term, kernel_term, _ = _split_equation(equation)
        named = input_term.replace("...", "")
        # The ellipsis stands for as many axes as the layer was built with.
        rank = getattr(self.input_spec, "ndim", None) or len(named) + 1
        shape = []
        for letter in input_term.replace("...", "." * (rank - len(named))):
            axis = kernel_term.find(letter)
            shape.append(kernel_shape[axis] if axis >= 0 else None)
        return tuple(shape)

    def _plain_config(self):
        config = super().get_config()
        for name in FourierFTConfig.__dataclass_fields__:
            config.pop(name, None)
        return config

    # Saving.

    def _base_store_size(self):
        probe = {}
        super().save_own_variables(probe)
        return len(probe)

    def save_own_variables(self, store):
        """Stores the base layer's entries, then the coefficients.

        The base entries (kernel, bias and any quantization scales) come
        first, at the indices the plain layer uses, so a full-model weights
        file keeps the base model's layout; a merged kernel is saved
        unmerged. The stored coefficients follow.
        """
        if not self.built:
            return
        base = {}
        super().save_own_variables(base)
        if self.merged:
            base["0"] = self._merged.original
        for key, value in base.items():
            store[key] = value
        store[str(len(base))] = self.coefficients

    def load_own_variables(self, store):
        """Loads what `save_own_variables` wrote, or a plain layer's entries.

        A store with only the plain layer's entries loads the base weights
        and keeps the coefficients. A merged layer is unmerged, loaded and
        merged again.
        """
        if not self.built:
            return
        size = self._base_store_size()
        keys = len(store.keys())
        if keys not in (size, size + 1):
            raise ValueError(
                f"Layer {self.name!r} expects {size} (plain layer) or "
                f"{size + 1} (with FourierFT coefficients) saved variables, "
                f"but the file has {keys}."
            )
        if keys == size + 1:
            coefficients = self._checked_coefficients(
                store[str(size)], "stored FourierFT coefficients"
            )
        was_merged = self.merged
        self.unmerge(force=True)
        super().load_own_variables(store)
        if keys == size + 1:
            self.coefficients.assign(coefficients)
        if was_merged:
            self.merge()

    def _check_load_own_variables(self, store):
        # The base layer's check counts all variables; `load_own_variables`
        # above checks the entry count, and the base layer's loading reads
        # only its own entries.
        return None

    def save_assets(self, dir_path):
        """Writes this adapter's record (`fourierft.json`) for `.keras` files.

        `keras_fourierft.load_model` reads it to re-enable FourierFT on models
        whose config does not list their layers (KerasHub backbones).
        """
        record = {
            "keras_fourierft": 1,
            "path": self.model_path or self.name,
            "config": self.fourierft_config.to_dict(),
        }
        with open(os.path.join(dir_path, "fourierft.json"), "w") as file:
            json.dump(record, file)

    def load_assets(self, dir_path):
        """Nothing to load: the layer config carries the settings."""
        return None

    def get_config(self):
        config = super().get_config()
        config.update(self.fourierft_config.to_dict())
        return config


def _check_size(layer, config, kernel_shape):
    view = kernel_view(getattr(layer, "equation", None), kernel_shape)
    size = view["in_features"] * view["out_features"]
    if config.n_frequency > size:
        raise ValueError(
            f"n_frequency={config.n_frequency} does not fit layer "
            f"{layer.name!r}: its {view['in_features']}x{view['out_features']} "
            f"weight has {size} entries. Use at most that many frequencies for "
            "this layer."
        )


def _to_tensors(plan):
    return {key: ops.convert_to_tensor(value) for key, value in plan.items()}


def _digest(array):
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes()).hexdigest()


def _stored_initializer(config):
    if config.coefficient_initializer == "zeros":
        return "zeros"
    normal = keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
    multiplier = config.lr_multiplier

    def initializer(shape, dtype=None):
        return ops.divide(normal(shape, dtype="float32"), multiplier)

    return initializer


_LAYER_DOC = """

    The kernel `W` and bias are frozen; the only trainable weight is
    `coefficients`, `n_frequency` values placed at fixed random locations of
    a spectrum `F` shaped like the 2-D `(input, output)` view of `W` (see
    `kernel_view`). The update is `delta_W = scaling * Re(IDFT2(F))`. With
    the default `seed` and uniform sampling the locations match Hugging
    Face PEFT's FourierFT exactly, so adapters transfer in both directions.

    `compute` chooses how a call applies the update (the results agree to
    float32 round-off, and so do the gradients):
    - `"dense"`: build `delta_W` with one 2-D FFT and run one matmul with
      `W + delta_W`; cheapest for small weights (e.g. 384x384);
    - `"activation"`: `x @ W` by the base layer's own computation (float or
      quantized) plus `x @ delta_W` computed from the FFT of `x` over its
      input features, never forming `delta_W` and computing no weight
      gradient; cheapest for LLM-size weights (e.g. 4096x4096);
    - `"auto"` (default): picks per call from the static shapes with a cost
      model measured on each backend.

    Coefficient initialisation: `"normal"` draws the spectrum from N(0, 1)
    (the paper's and PEFT's default), `"zeros"` starts from the pretrained
    function. `lr_multiplier` reparametrises the coefficients: the variable
    stores `spectrum / lr_multiplier`, which multiplies their effective
    learning rate under Adam-family optimizers (by `lr_multiplier**2` with
    plain SGD) without changing the function or the saved spectrum.

    Merging (`merge()`) folds `delta_W` into a float kernel for inference;
    while merged the coefficients do not train and the adapter cannot be
    turned off. A quantized base (`int8`, `int4`, `float8`; quantize before
    or after adapting) runs unmerged.

    Args:
{args}
        n_frequency: Integer, the number of trainable spectral coefficients.
        scaling: Float, the factor `alpha` of the update.
        seed: Integer, the seed of the frequency locations (PEFT's
            `random_loc_seed`).
        sampling: `"uniform"` (PEFT's) or `"frequency_biased"` (paper Eq. 5;
            see `frequency_locations`).
        center_frequency: Float, `f_c` for frequency-biased sampling.
        bandwidth: Float, `W` for frequency-biased sampling.
        coefficient_initializer: `"normal"` or `"zeros"`.
        lr_multiplier: Positive float, see above (default 30).
        compute: `"auto"`, `"dense"` or `"activation"`, see above.
        **kwargs: The arguments of `keras.layers.{base}`.
"""


@keras.saving.register_keras_serializable(package="keras_fourierft")
class FourierDense(_FourierFTMixin, keras.layers.Dense):
    def _linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def _token_axes(self, rank):
        return range(rank - 1)

    def _rows(self, inputs):
        in_features = self._view["in_features"]
        rows = ops.reshape(inputs, (-1, in_features))
        leading = ops.shape(inputs)[:-1]

        def restore(update):
            return ops.reshape(update, tuple(leading) + (self.units,))

        return rows, restore


@keras.saving.register_keras_serializable(package="keras_fourierft")
class FourierEinsumDense(_FourierFTMixin, keras.layers.EinsumDense):
    def _linear(self, inputs, kernel):
        return ops.einsum(self.equation, inputs, kernel)

    def _layout(self, rank):
        return _row_layout(self.equation, float_kernel_shape(self), rank)

    def _token_axes(self, rank):
        return self._layout(rank).token_axes

    def _rows(self, inputs):
        layout = self._layout(len(inputs.shape))
        rows, token_shape = layout.to_rows(inputs, self._view["in_features"])

        def restore(update):
            return layout.from_rows(update, token_shape)

        return rows, restore


FourierDense.__doc__ = (
    "A `keras.layers.Dense` with a frozen kernel adapted by FourierFT."
    + _LAYER_DOC.format(
        args="        *args: `units` and the other `Dense` arguments.",
        base="Dense",
    )
    + """
    Example:

    ```python
    layer = keras_fourierft.FourierDense(64, n_frequency=200)
    y = layer(np.ones((2, 32)))   # built: frozen kernel, 200 coefficients
    layer.merge()                 # zero-overhead inference
    ```
    """
)
FourierEinsumDense.__doc__ = (
    "A `keras.layers.EinsumDense` with a frozen kernel adapted by FourierFT."
    + _LAYER_DOC.format(
        args="        *args: `equation`, `output_shape` and the other "
        "`EinsumDense` arguments.",
        base="EinsumDense",
    )
    + """
    Example:

    ```python
    layer = keras_fourierft.FourierEinsumDense(
        "abc,cde->abde", (None, 12, 64), n_frequency=1000
    )
    y = layer(np.ones((2, 8, 768)))
    ```
    """
)

# Keras files address list-held layers (Sequential and Functional models) by
# their class name; the adapted classes keep the base class's name so that
# adapting a layer leaves the model's weight-file layout unchanged. They are
# registered (and serialized) as `keras_fourierft>FourierDense` and
# `keras_fourierft>FourierEinsumDense`.
FourierDense.__name__ = "Dense"
FourierEinsumDense.__name__ = "EinsumDense"

_ADAPTED_CLASS = {
    keras.layers.Dense: FourierDense,
    keras.layers.EinsumDense: FourierEinsumDense,
}
_PLAIN_CLASS = {adapted: plain for plain, adapted in _ADAPTED_CLASS.items()}


def is_adapted(layer):
    """Whether a layer carries a FourierFT adapter.

    Args:
        layer: Any Keras layer.

    Returns:
        Boolean.
    """
    return isinstance(layer, _FourierFTMixin)


def adapt_in_place(layer, config):
    return adapt_layer(layer, config)


def remove_in_place(layer, merge=True):
    return remove_adapter(layer, merge=merge)
