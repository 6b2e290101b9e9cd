"""`FourierDense`: a frozen Dense/EinsumDense adapted by FourierFT."""

import json
import math

import keras
import numpy as np
from keras import ops

from keras_fourierft import spectral

ADAPTER_SETTINGS = (
    "n_frequency",
    "scaling",
    "seed",
    "sampling",
    "center_frequency",
    "bandwidth",
)


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
            einsum equation string such as `"abc,cde->abde"`.
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


def _einsum_feature_axes(equation):
    try:
        operands, output = equation.replace(" ", "").split("->")
        input_term, kernel_term = operands.split(",")
    except ValueError:
        raise ValueError(
            f"Cannot read the einsum equation {equation!r}: expected the form "
            "'<input>,<kernel>-><output>'."
        ) from None
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
    return input_axes, output_axes


def check_wrappable(layer):
    if isinstance(layer, FourierDense):
        raise ValueError(
            f"Layer {layer.name!r} is already a FourierDense. Wrap the "
            "original Dense/EinsumDense only once; to change the adapter, "
            "build a new FourierDense from `layer.to_plain_layer()`."
        )
    if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
        raise TypeError(
            "FourierDense wraps a `keras.layers.Dense` or "
            f"`keras.layers.EinsumDense`. Received layer {layer!r} of type "
            f"{type(layer).__name__}."
        )
    if getattr(layer, "lora_enabled", False) or getattr(layer, "lora_rank", None):
        raise ValueError(
            f"Layer {layer.name!r} has LoRA enabled. FourierFT and LoRA cannot "
            "be stacked on one layer: use a layer without `lora_rank` (or "
            "merge the LoRA update into a fresh layer first)."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"Layer {layer.name!r} is quantized ({layer.quantization_mode!r}); "
            "FourierFT needs a float kernel. Wrap the layer before quantizing."
        )
    if layer.kernel_constraint is not None:
        raise ValueError(
            f"Layer {layer.name!r} has a kernel_constraint. FourierFT adds a "
            "dense update to the kernel that a constraint cannot see, so it "
            "would be silently violated. Remove the constraint first."
        )


@keras.saving.register_keras_serializable(package="keras_fourierft")
class FourierDense(keras.layers.Layer):
    """A `Dense`/`EinsumDense` whose frozen kernel is adapted by FourierFT.

    The wrapped kernel `W` and bias are frozen; the only trainable weight is
    `coefficients`, `n_frequency` values placed at fixed random locations of
    a spectrum `F` shaped like the 2-D `(input, output)` view of `W` (see
    `kernel_view`). The update is

    `delta_W = scaling * Re(IDFT2(F))`,

    computed once per call in float32 and added to the kernel, so the forward
    pass costs a single matmul/einsum with `W + delta_W` (like the wrapped
    layer, plus one small FFT). With the default `seed` and uniform sampling
    the locations match Hugging Face PEFT's FourierFT exactly, so adapters
    transfer in both directions.

    Coefficient initialisation: `"normal"` draws the spectrum from N(0, 1)
    (the paper's and PEFT's default; the adapted layer differs from the
    pretrained one from the first step, which gives larger early gradients),
    `"zeros"` starts from the exact pretrained function (delta_W = 0) and is
    the safer choice on small data.

    `lr_multiplier` reparametrises the coefficients: the variable stores
    `spectrum / lr_multiplier` and the layer uses
    `lr_multiplier * coefficients`. With Adam-family optimizers (whose steps
    do not depend on the gradient's scale) this multiplies the coefficients'
    effective learning rate by `lr_multiplier`, so one optimizer can train
    the coefficients (which want 10-100x larger steps) and a task head
    together. With plain SGD the factor is `lr_multiplier**2`. It does not
    change the function, the saved spectrum or PEFT compatibility.

    Args:
        layer: A `keras.layers.Dense` or `keras.layers.EinsumDense`, built or
            not. Its variables are taken over (not copied) when built.
        n_frequency: Integer, the number of trainable spectral coefficients.
        scaling: Float, the factor `alpha` of the update.
        seed: Integer, the seed of the frequency locations (PEFT's
            `random_loc_seed`).
        sampling: `"uniform"` (PEFT's) or `"frequency_biased"` (paper Eq. 5;
            see `frequency_locations`).
        center_frequency: Float, `f_c` for frequency-biased sampling.
        bandwidth: Float, `W` for frequency-biased sampling.
        coefficient_initializer: `"normal"` (N(0, 1) spectrum), `"zeros"`,
            or any Keras initializer for the spectrum.
        lr_multiplier: Positive float, see above.
        **kwargs: Base layer keyword arguments (`name` defaults to the
            wrapped layer's name, `dtype` to its dtype policy).

    Example:

    ```python
    dense = keras.layers.Dense(64)
    dense.build((None, 32))
    adapted = keras_fourierft.FourierDense(dense, n_frequency=200)
    y = adapted(np.ones((2, 32)))
    adapted.merge()          # zero-overhead inference
    plain = adapted.to_plain_layer()  # a keras Dense with W + delta_W
    ```
    """

    def __init__(
        self,
        layer,
        n_frequency=1000,
        scaling=150.0,
        seed=777,
        sampling="uniform",
        center_frequency=None,
        bandwidth=None,
        coefficient_initializer="normal",
        lr_multiplier=1.0,
        **kwargs,
    ):
        check_wrappable(layer)
        if not isinstance(n_frequency, (int, np.integer)) or n_frequency <= 0:
            raise ValueError(
                "`n_frequency` must be a positive integer. Received: "
                f"n_frequency={n_frequency!r}"
            )
        if sampling not in spectral.SAMPLINGS:
            raise ValueError(
                f"`sampling` must be one of {spectral.SAMPLINGS}. Received: "
                f"sampling={sampling!r}"
            )
        if not lr_multiplier > 0:
            raise ValueError(
                "`lr_multiplier` must be positive. Received: "
                f"lr_multiplier={lr_multiplier!r}"
            )
        kwargs.setdefault("name", layer.name)
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(**kwargs)
        self.n_frequency = int(n_frequency)
        self.scaling = float(scaling)
        self.seed = int(seed)
        self.sampling = sampling
        self.center_frequency = center_frequency
        self.bandwidth = bandwidth
        self.lr_multiplier = float(lr_multiplier)
        self.coefficient_initializer = _spectrum_initializer(coefficient_initializer)
        self._layer_class = type(layer)
        self._layer_config = layer.get_config()
        self.activation = layer.activation
        self.equation = getattr(layer, "equation", None)
        self.adapter_enabled = True
        self.model_path = None
        self._merged_from = None
        self.supports_masking = True
        if layer.built:
            self._adopt(layer)

    @property
    def merged(self):
        """Whether delta_W is currently folded into the kernel."""
        return self._merged_from is not None

    @property
    def kernel(self):
        """The frozen kernel variable (holds W + delta_W while merged)."""
        return self._kernel

    @property
    def spectrum(self):
        """The effective spectral coefficients, `lr_multiplier * coefficients`."""
        return ops.multiply(self.coefficients, self.lr_multiplier)

    def set_spectrum(self, values):
        """Assigns effective spectral coefficients (the inverse of `spectrum`).

        Args:
            values: Array-like of shape `(n_frequency,)`.
        """
        values = np.asarray(values, dtype="float32")
        if values.shape != (self.n_frequency,):
            raise ValueError(
                f"Layer {self.name!r} expects a spectrum of shape "
                f"({self.n_frequency},). Received shape {values.shape}."
            )
        was_merged = self.merged
        self.unmerge()
        self.coefficients.assign(values / self.lr_multiplier)
        if was_merged:
            self.merge()

    def build(self, input_shape):
        if self.built:
            return
        layer = self._layer_class.from_config(self._layer_config)
        layer.build(input_shape)
        self._adopt(layer)

    def _adopt(self, layer):
        """Takes over the built layer's variables and creates coefficients."""
        kernel = layer.kernel
        view = kernel_view(self.equation, kernel.shape)
        self._view = view
        self.locations = spectral.frequency_locations(
            view["out_features"],
            view["in_features"],
            self.n_frequency,
            seed=self.seed,
            sampling=self.sampling,
            center_frequency=self.center_frequency,
            bandwidth=self.bandwidth,
        )
        plan = spectral.spectral_plan(
            spectral.kernel_indices(self.locations),
            (view["in_features"], view["out_features"]),
        )
        self._plan = {key: ops.convert_to_tensor(value) for key, value in plan.items()}
        kernel.trainable = False
        self._kernel = kernel
        self.bias = layer.bias
        if self.bias is not None:
            self.bias.trainable = False
        self.coefficients = self.add_weight(
            name="coefficients",
            shape=(self.n_frequency,),
            initializer=self._stored_initializer(),
            dtype="float32",
            trainable=True,
        )
        self.built = True

    def _stored_initializer(self):
        initializer = self.coefficient_initializer
        multiplier = self.lr_multiplier

        def init(shape, dtype=None):
            return ops.divide(initializer(shape, dtype="float32"), multiplier)

        return init

    def delta_weight(self):
        """Returns delta_W in the kernel's own shape, as a float32 tensor."""
        view = self._view
        delta = spectral.delta_from_plan(
            self.spectrum,
            self._plan,
            (view["in_features"], view["out_features"]),
            self.scaling,
        )
        if self.equation is None:
            return delta
        shape = tuple(self._kernel.shape)
        permutation = view["permutation"]
        delta = ops.reshape(delta, [shape[axis] for axis in permutation])
        return ops.transpose(delta, np.argsort(permutation).tolist())

    def _effective_kernel(self):
        if self.merged or not self.adapter_enabled:
            return ops.cast(self._kernel, self.compute_dtype)
        kernel = ops.add(ops.cast(self._kernel, "float32"), self.delta_weight())
        return ops.cast(kernel, self.compute_dtype)

    def call(self, inputs, training=None):
        kernel = self._effective_kernel()
        if self.equation is None:
            x = ops.matmul(inputs, kernel)
        else:
            x = ops.einsum(self.equation, inputs, kernel)
        if self.bias is not None:
            x = ops.add(x, ops.cast(self.bias, self.compute_dtype))
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        twin = self._layer_class.from_config(self._layer_config)
        return twin.compute_output_shape(input_shape)

    def merge(self, safe_merge=False):
        """Folds delta_W into the kernel for zero-overhead inference.

        While merged the layer costs exactly what the plain layer costs; the
        original kernel is kept on the host so that `unmerge()` restores it
        bit for bit. Merging twice is a no-op.

        Args:
            safe_merge: If True, check the merged kernel for NaN/Inf first and
                raise (leaving the layer unchanged) instead of merging.
        """
        self._require_built("merge")
        if self.merged:
            return
        original = ops.convert_to_numpy(self._kernel).copy()
        merged = self._merged_kernel_value(original, safe_merge)
        self._kernel.assign(merged)
        self._merged_from = original

    def unmerge(self):
        """Restores the original kernel exactly after `merge()`."""
        if not self.merged:
            return
        self._kernel.assign(self._merged_from)
        self._merged_from = None

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
        self._require_built("read the original kernel of")
        if self.merged:
            return self._merged_from.copy()
        return ops.convert_to_numpy(self._kernel)

    def to_plain_layer(self, safe_merge=True):
        """Returns a new plain `Dense`/`EinsumDense` holding `W + delta_W`.

        The result has the wrapped layer's config and name, needs nothing from
        this package, and is independent of this layer's variables. A
        disabled adapter exports the original kernel.

        Args:
            safe_merge: If True (default), refuse non-finite merged kernels.

        Returns:
            A built `keras.layers.Dense` or `keras.layers.EinsumDense`.
        """
        self._require_built("export")
        original = self.original_kernel()
        if self.adapter_enabled:
            kernel = self._merged_kernel_value(original, safe_merge)
        else:
            kernel = original
        layer = self._layer_class.from_config(self._layer_config)
        layer.build(self._plain_input_shape())
        layer.kernel.assign(kernel)
        if self.bias is not None:
            layer.bias.assign(ops.convert_to_numpy(self.bias))
        return layer

    def _plain_input_shape(self):
        kernel_shape = tuple(self._kernel.shape)
        if self.equation is None:
            return (None, kernel_shape[0])
        input_term = self.equation.split(",")[0].replace(" ", "")
        shape = [None] if "..." in input_term else []
        kernel_term = self.equation.split(",")[1].split("->")[0].strip()
        for letter in input_term.replace("...", ""):
            axis = kernel_term.find(letter)
            shape.append(kernel_shape[axis] if axis >= 0 else None)
        return tuple(shape)

    def _require_built(self, action):
        if not self.built:
            raise ValueError(
                f"Cannot {action} layer {self.name!r} before it is built. "
                "Call the layer on data (or `layer.build(input_shape)`) first."
            )

    def save_own_variables(self, store):
        """Stores kernel, bias, coefficients in the wrapped layer's order.

        Index 0 is the kernel and 1 the bias (if any), exactly as the plain
        layer saves them, so full-model weight files keep the base model's
        layout; the coefficients follow. A merged kernel is saved unmerged.
        """
        if not self.built:
            return
        values = self._own_values()
        values.append(np.frombuffer(self._record().encode("utf-8"), dtype=np.uint8))
        for index, value in enumerate(values):
            store[str(index)] = value

    def load_own_variables(self, store):
        """Loads what `save_own_variables` wrote, or a plain layer's entries.

        A store with only the plain layer's kernel (and bias) loads the base
        weights and keeps the coefficients.
        """
        if not self.built:
            return
        base = [self._kernel] + ([self.bias] if self.bias is not None else [])
        keys = len(store.keys())
        if keys not in (len(base), len(base) + 1, len(base) + 2):
            raise ValueError(
                f"Layer {self.name!r} expects {len(base)} (plain layer) or "
                f"{len(base) + 2} (with FourierFT coefficients) saved "
                f"variables, but the file has {keys}."
            )
        was_merged = self.merged
        self.unmerge()
        targets = base + ([self.coefficients] if keys > len(base) else [])
        for index, variable in enumerate(targets):
            variable.assign(store[str(index)])
        if was_merged:
            self.merge()

    def adapter_config(self):
        """The settings that define this adapter's spectrum.

        Returns:
            A dict with `in_features`, `out_features` (the 2-D view) and the
            `ADAPTER_SETTINGS` (`n_frequency`, `scaling`, `seed`, `sampling`,
            `center_frequency`, `bandwidth`).
        """
        self._require_built("describe")
        config = {
            "in_features": self._view["in_features"],
            "out_features": self._view["out_features"],
        }
        config.update({name: getattr(self, name) for name in ADAPTER_SETTINGS})
        return config

    def _record(self):
        """JSON describing this adapter, saved beside its variables.

        `keras_fourierft.load_model` reads it to re-enable FourierFT on models
        whose config does not list their layers (KerasHub backbones).
        """
        config = self.adapter_config()
        config["lr_multiplier"] = self.lr_multiplier
        return json.dumps(
            {"keras_fourierft": 1, "path": self.model_path, "config": config}
        )

    def _own_values(self):
        values = [self.original_kernel()]
        if self.bias is not None:
            values.append(self.bias)
        values.append(self.coefficients)
        return values

    def get_config(self):
        base_config = super().get_config()
        layer = self._layer_class.from_config(self._layer_config)
        config = {
            "layer": keras.saving.serialize_keras_object(layer),
            "n_frequency": self.n_frequency,
            "scaling": self.scaling,
            "seed": self.seed,
            "sampling": self.sampling,
            "center_frequency": self.center_frequency,
            "bandwidth": self.bandwidth,
            "coefficient_initializer": keras.saving.serialize_keras_object(
                self.coefficient_initializer
            ),
            "lr_multiplier": self.lr_multiplier,
        }
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        config["coefficient_initializer"] = keras.saving.deserialize_keras_object(
            config["coefficient_initializer"]
        )
        return cls(**config)


def _spectrum_initializer(identifier):
    if identifier == "normal":
        return keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
    if identifier == "zeros":
        return keras.initializers.Zeros()
    try:
        return keras.initializers.get(identifier)
    except ValueError:
        raise ValueError(
            "`coefficient_initializer` must be 'normal', 'zeros' or a Keras "
            f"initializer. Received: {identifier!r}"
        ) from None
