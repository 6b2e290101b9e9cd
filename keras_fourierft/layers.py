"""FourierFT layers: `Dense` and `EinsumDense` adapted in place.

`FourierDense` and `FourierEinsumDense` are the Keras layers with a frozen
kernel and `n_frequency` trainable spectral coefficients. A built `Dense` or
`EinsumDense` becomes one in place with `adapt_in_place` (what
`enable_fourierft` does to every target), the way `Dense.enable_lora` adapts
a layer: the same object, its name, variables, variable paths and place in
the model stay as they were; a `coefficients` variable is added and `call`
adds the update.

Adapter state that compiled functions must see (on/off, merged) lives in a
non-trainable boolean variable, `fourierft_active`, read at run time by
`call`: a `predict`/`fit`/`evaluate`/`generate` function compiled before a
state change computes what an eager call computes after it. Everything else
an adapted layer adds is recorded in its `_AdapterState`, so removal undoes
exactly that.
"""

import collections
import contextlib
import contextvars
import hashlib
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from keras_fourierft import distribution
from keras_fourierft import geometry
from keras_fourierft import keras_internals
from keras_fourierft import spectral
from keras_fourierft.config import SPECTRUM_FIELDS
from keras_fourierft.config import FourierFTConfig

# The geometry helpers other modules read from here.
kernel_view = geometry.kernel_view
float_kernel_shape = geometry.float_kernel_shape

QUANTIZATION_MODES = (None, "int8", "int4", "float8")

# The layer whose base quantized call runs without its activation, per
# thread (and task): a call changes no layer state.
_WITHOUT_ACTIVATION = contextvars.ContextVar("fourierft_without_activation")


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
            "`keras_fourierft.unload_fourierft(layer)` first."
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
    _check_no_lora(layer)
    if layer.quantization_mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Layer {layer.name!r} is quantized with "
            f"{layer.quantization_mode!r}; FourierFT runs on float, 'int8', "
            "'int4' and 'float8' bases. Quantize with one of those, or add "
            "the adapter to the float model."
        )
    _check_no_constraint(layer)
    distribution.check_placement(layer.weights, f"layer {layer.name!r}")
    if config is not None:
        geometry.check_size(layer, config.n_frequency)
        distribution.check_coefficient_layout(layer, config.n_frequency)
    distribution.check_strategy(layer)


def _check_no_lora(layer):
    if getattr(layer, "lora_enabled", False) or getattr(layer, "lora_rank", None):
        raise ValueError(
            f"Layer {layer.name!r} has LoRA enabled (`lora_rank`). FourierFT "
            "and LoRA cannot be stacked on one layer: use a layer without "
            "`lora_rank`."
        )


def _check_no_constraint(layer):
    if layer.kernel_constraint is not None:
        raise ValueError(
            f"Layer {layer.name!r} has a kernel_constraint. FourierFT adds an "
            "update to the kernel that a constraint cannot see, so it would "
            "be silently violated. Remove the `kernel_constraint` first."
        )


def adapt_in_place(layer, config):
    """Adds a FourierFT adapter to a built `Dense`/`EinsumDense`, in place.

    The layer object stays the same (its class becomes `FourierDense` or
    `FourierEinsumDense`): its name, variables, variable paths and place in
    every model and container that holds it are unchanged. Its kernel and
    bias are frozen and a trainable `coefficients` variable is added. Works
    on float and on `int8`/`int4`/`float8`-quantized layers. Everything is
    checked before anything changes.

    A function a model compiled before (`predict`, `fit`, `evaluate`,
    KerasHub's `generate`) holds the layer's plain class; the model-level
    `enable_fourierft(model)` drops those functions.

    Args:
        layer: A built `keras.layers.Dense` or `keras.layers.EinsumDense`.
        config: A `FourierFTConfig`.

    Returns:
        The same layer, adapted.
    """
    check_adaptable(layer, config)
    with distribution.variable_scope(layer), keras_internals.unlocked_tracker(layer):
        keras_internals.set_layer_class(layer, _ADAPTED_CLASS[type(layer)])
        layer._init_fourierft(config)
        layer._build_fourierft()
    return layer


def remove_in_place(layer, merge=True):
    """Turns an adapted layer back into a plain `Dense`/`EinsumDense`, in place.

    Everything the adapter added is dropped. A function compiled while the
    layer was adapted keeps computing what the plain layer computes: the
    adapter is switched off (and merged, with `merge=True`) first.

    Args:
        layer: A `FourierDense` or `FourierEinsumDense`.
        merge: If True the kernel keeps `W + delta_W` (the layer computes what
            the adapted layer computed); if False the original `W` comes back.

    Returns:
        The same layer, now plain.
    """
    if not isinstance(layer, _FourierFTMixin):
        raise ValueError(f"Layer {layer.name!r} has no FourierFT adapter.")
    layer._drop_bank()
    if merge and layer.adapter_enabled:
        layer.merge(safe_merge=True)
    else:
        layer.unmerge(force=True)
    # Off: a compiled function that still holds the adapted class reads it.
    layer._fourierft.gate.assign(False)
    added = layer._fourierft.added
    with keras_internals.unlocked_tracker(layer):
        keras_internals.set_layer_class(layer, _PLAIN_CLASS[type(layer)])
        for name in sorted(added):
            delattr(layer, name)
    return layer


def adapt_layer(layer, config=None, **settings):
    """`adapt_in_place` with settings as keyword arguments (0.2's name).

    Args:
        layer: A built `keras.layers.Dense` or `keras.layers.EinsumDense`.
        config: Optional `FourierFTConfig`.
        **settings: `FourierFTConfig` fields, used when `config` is None.

    Returns:
        The same layer, adapted.

    Example:

    ```python
    dense = keras.layers.Dense(64)
    dense.build((None, 32))
    adapt_layer(dense, n_frequency=200)
    ```
    """
    if config is None:
        config = FourierFTConfig(**settings)
    elif settings:
        raise ValueError("Pass either `config` or settings, not both.")
    called = keras_internals.was_called(layer)
    adapt_in_place(layer, config)
    if called:
        warnings.warn(
            f"Layer {layer.name!r} was adapted after it ran: a model that "
            "already compiled predict/fit/evaluate/generate functions with "
            "it keeps the plain layer in them. Enable FourierFT through the "
            "model (`keras_fourierft.enable_fourierft(model, ...)`), which "
            "drops those functions, or set the model's `predict_function`, "
            "`train_function`, `test_function` (and `generate_function`) to "
            "None.",
            UserWarning,
            stacklevel=2,
        )
    return layer


def remove_adapter(layer, merge=True):
    """`remove_in_place` (0.2's name).

    Args:
        layer: A `FourierDense` or `FourierEinsumDense`.
        merge: Boolean, whether to keep the adapter's effect.

    Returns:
        The same layer, now plain.
    """
    return remove_in_place(layer, merge=merge)


def is_adapted(layer):
    """Whether a layer carries a FourierFT adapter.

    Args:
        layer: Any Keras layer.

    Returns:
        Boolean.
    """
    return isinstance(layer, _FourierFTMixin)


class _Merged(collections.namedtuple("_Merged", "original digest trainable")):
    """A merged layer's original kernel, a digest of the merged one, and
    whether its coefficients were trainable before the merge."""


class _Bank(collections.namedtuple("_Bank", "table rows active")):
    """An adapter bank's variables: the `(capacity + 1, n)` coefficient
    table (row 0 all zeros: the base model), the adapter row of each batch
    row, and whether the selection is in force."""

    @property
    def capacity(self):
        return int(self.table.shape[0]) - 1

    @property
    def max_batch_size(self):
        return int(self.rows.shape[0])


class _AdapterState(keras_internals.Saveable):
    """Everything an adapted layer adds, in one place.

    Held as the layer's `_fourierft` attribute, it is also what Keras saves
    the coefficients from: weights files hold them in the group
    `<layer>/_fourierft/vars`, apart from the layer's own entries, so a file
    of the adapted model loads into the plain model (which ignores the
    group) and a plain model's file loads into the adapted one.

    Attributes:
        config: The layer's `FourierFTConfig`.
        enabled: Whether the adapter is on (Python side).
        merged: A `_Merged` record while merged, else None.
        gate: The `fourierft_active` variable: on and not merged.
        bank: A `_Bank` while the layer serves an adapter bank, else None.
        added: Names of the attributes adaptation added to the layer.
    """

    def __init__(self, layer, config):
        self._layer = weakref.ref(layer)
        self.config = config
        self.enabled = True
        self.merged = None
        self.gate = None
        self.bank = None
        self.added = set()
        self._plans = {}
        self._view = None
        self._locations = None

    def save_own_variables(self, store):
        layer = self._layer()
        if layer is not None and layer.built:
            store["0"] = layer.coefficients

    def load_own_variables(self, store):
        layer = self._layer()
        if layer is None or not layer.built or not len(store.keys()):
            return
        if sorted(store.keys()) != ["0"]:
            raise ValueError(
                f"Layer {layer.name!r}: the file's FourierFT group holds "
                f"{sorted(store.keys())}, not one coefficients entry."
            )
        layer._load_coefficients(store["0"])

    def bind(self, kernel_shape, equation):
        self._view = geometry.kernel_view(equation, kernel_shape)
        self._plans = {}
        self._locations = None

    @property
    def view(self):
        return self._view

    @property
    def locations(self):
        if self._locations is None:
            config, view = self.config, self._view
            self._locations = spectral.frequency_locations(
                view["out_features"],
                view["in_features"],
                config.n_frequency,
                seed=config.seed,
                sampling=config.sampling,
                center_frequency=config.center_frequency,
                bandwidth=config.bandwidth,
            )
        return self._locations

    def plan(self, path):
        """The index plan of one compute path, built on first use.

        Numpy arrays: every call path takes them as constants (a tensor made
        inside a traced function would belong to that trace).
        """
        if path not in self._plans:
            indices = spectral.kernel_indices(self.locations)
            size = (self._view["in_features"], self._view["out_features"])
            make = (
                spectral.spectral_plan if path == "dense" else spectral.activation_plan
            )
            self._plans[path] = make(indices, size)
        return self._plans[path]


@contextlib.contextmanager
def _recording(layer):
    """Records the attributes added to `layer` inside the block."""
    before = set(vars(layer))
    try:
        yield
    finally:
        layer._fourierft.added |= set(vars(layer)) - before


def _setting(name, doc):
    return property(lambda self: getattr(self._fourierft.config, name), doc=doc)


class _ComputePaths:
    """How a call applies the update: gated by `fourierft_active`.

    The gate is read at run time (`ops.cond`), so a compiled function sees
    every on/off or merge change; off or merged, only the base layer's own
    computation runs.
    """

    @property
    def activation(self):
        """The layer's activation (None inside its own base quantized call)."""
        if _WITHOUT_ACTIVATION.get(None) is self:
            return None
        return self.__dict__.get("activation")

    @activation.setter
    def activation(self, value):
        self.__dict__["activation"] = value

    def _gated(self, inputs, base, adapted):
        # An empty input gets no update: torch's FFT refuses empty tensors,
        # and so does TensorFlow's `ops.add` with two empty `(0, units)` ones.
        if 0 in tuple(inputs.shape):
            return base()
        mode = self._compute_mode(inputs)
        plan = self._fourierft.plan(mode)
        return ops.cond(self._fourierft.gate.value, lambda: adapted(mode, plan), base)

    def call(self, inputs, training=None):
        base = super().call
        return self._banked(
            inputs,
            training,
            lambda: self._single_call(inputs, training, base),
            lambda: self._adapted_call(inputs, "bank", None),
        )

    def _single_call(self, inputs, training, base):
        if 0 not in tuple(inputs.shape) and self._compute_mode(inputs) == "dense":
            return self._finish(self._linear(inputs, self._gated_kernel()))
        return self._gated(
            inputs,
            lambda: base(inputs, training=training),
            lambda mode, plan: self._adapted_call(inputs, mode, plan),
        )

    def _banked(self, inputs, training, single, banked):
        """`banked()` while an adapter bank's selection is in force and the
        adapter is on, else `single()`; read at run time, like the gate.

        Training calls ignore the selection: they train the layer's own
        coefficients (the bank's table is not trained).
        """
        bank = self._fourierft.bank
        if bank is None or training or 0 in tuple(inputs.shape):
            return single()
        selected = ops.logical_and(bank.active.value, self._fourierft.gate.value)
        return ops.cond(selected, banked, single)

    def _gated_kernel(self):
        """The kernel the dense path multiplies by: `W + delta_W` when on.

        The gate selects the kernel rather than the whole call, so inside a
        compiled loop (JAX's `generate`) the selection and `delta_W` depend
        on loop-invariant values only and XLA computes them once per loop.
        """
        kernel = self.kernel

        def adapted():
            work = _work_dtype(kernel.dtype)
            delta = self._shaped(self._delta_2d(self._fourierft.plan("dense")))
            summed = ops.add(ops.cast(kernel, work), ops.cast(delta, work))
            return ops.cast(summed, self.compute_dtype)

        return ops.cond(
            self._fourierft.gate.value,
            adapted,
            lambda: ops.cast(kernel, self.compute_dtype),
        )

    def quantized_call(self, inputs, training=None):
        base = super().quantized_call
        return self._banked(
            inputs,
            training,
            lambda: self._gated(
                inputs,
                lambda: base(inputs, training=training),
                lambda mode, plan: self._adapted_quantized_call(
                    base, inputs, training, mode, plan
                ),
            ),
            lambda: self._adapted_quantized_call(base, inputs, training, "bank", None),
        )

    def _adapted_call(self, inputs, mode, plan):
        rows, restore = self._rows(inputs)
        update = self._update(inputs, rows, mode, plan)
        x = ops.add(
            self._linear(inputs, self.kernel),
            restore(ops.cast(update, self.compute_dtype)),
        )
        return self._finish(x)

    def _adapted_quantized_call(self, base, inputs, training, mode, plan):
        token = _WITHOUT_ACTIVATION.set(self)
        try:
            x = base(inputs, training=training)
        finally:
            _WITHOUT_ACTIVATION.reset(token)
        rows, restore = self._rows(inputs)
        update = self._update(inputs, rows, mode, plan)
        x = ops.add(x, restore(ops.cast(update, x.dtype)))
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _finish(self, x):
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _compute_mode(self, inputs):
        if self.compute_path != "auto":
            return self.compute_path
        sizes = [inputs.shape[axis] for axis in self._token_axes(len(inputs.shape))]
        tokens = None if None in sizes else int(np.prod(sizes, dtype="int64"))
        view = self._fourierft.view
        return spectral.choose_compute(
            tokens,
            view["in_features"],
            view["out_features"],
            self.n_frequency,
            in_compiled_loop=_is_decode_step(sizes),
        )

    def _update(self, inputs, rows, mode, plan):
        """The update of `rows` (the `(tokens, d1)` rows of `inputs`)."""
        if mode != "bank":
            return self._adapter_rows(rows, mode, plan)
        view = self._fourierft.view
        return spectral.rowwise_spectral_matmul(
            rows,
            self._fourierft.bank.table.value,
            self._bank_row_ids(inputs),
            self._fourierft.plan("activation"),
            (view["in_features"], view["out_features"]),
            self.scaling,
        )

    def _bank_row_ids(self, inputs):
        """The bank row of each batch row (the inputs' first axis)."""
        bank = self._fourierft.bank
        if self._token_axes(len(inputs.shape))[0] != 0:
            raise ValueError(
                f"Layer {self.name!r}: its inputs' first axis is not a batch "
                "axis, so an adapter bank cannot choose an adapter per row."
            )
        # Rows past `max_batch_size` are past every selection: the base.
        index = ops.arange(ops.shape(inputs)[0], dtype="int32")
        last = bank.max_batch_size - 1
        ids = ops.take(bank.rows.value, ops.minimum(index, last), axis=0)
        return ops.where(index <= last, ids, ops.zeros_like(ids))

    def _adapter_rows(self, rows, mode, plan):
        """`rows @ delta_W` for `(tokens, d1)` rows, float32."""
        view = self._fourierft.view
        shape = (view["in_features"], view["out_features"])
        if mode == "activation":
            return spectral.spectral_matmul(
                rows, self.spectrum, plan, shape, self.scaling
            )
        return ops.matmul(ops.cast(rows, "float32"), self._delta_2d(plan))

    def delta_weight(self):
        """Returns delta_W in the kernel's own shape, as a float32 tensor."""
        return self._shaped(self._delta_2d(self._fourierft.plan("dense")))

    def _shaped(self, delta):
        """A 2-D `(d1, d2)` update in the kernel's own shape."""
        equation = getattr(self, "equation", None)
        if equation is None:
            return delta
        shape = geometry.float_kernel_shape(self)
        permutation = self._fourierft.view["permutation"]
        delta = ops.reshape(delta, [shape[axis] for axis in permutation])
        return ops.transpose(delta, np.argsort(permutation).tolist())

    def _delta_2d(self, plan):
        view = self._fourierft.view
        return spectral.delta_from_plan(
            self.spectrum,
            plan,
            (view["in_features"], view["out_features"]),
            self.scaling,
        )


class _MergeState:
    """On/off and merged state, mirrored into the `fourierft_active` gate."""

    def _sync_gate(self):
        state = self._fourierft
        state.gate.assign(bool(state.enabled and state.merged is None))

    @property
    def merged(self):
        """Whether delta_W is currently folded into the kernel."""
        return self._fourierft.merged is not None

    @property
    def adapter_enabled(self):
        """Whether `call` applies the update; settable (not while merged)."""
        return self._fourierft.enabled

    @adapter_enabled.setter
    def adapter_enabled(self, value):
        value = bool(value)
        if value == self._fourierft.enabled:
            return
        if self.merged:
            raise ValueError(
                f"Layer {self.name!r}: the adapter is merged into the kernel, "
                "so it cannot be turned off. Call `unmerge()` first."
            )
        self._fourierft.enabled = value
        self._sync_gate()

    def _check_mergeable(self):
        if self._fourierft.bank is not None:
            raise ValueError(
                f"Layer {self.name!r} serves an adapter bank, which adds each "
                "row's update to the unmerged kernel. Unload the bank "
                "(`AdapterBank.unload()`) before merging."
            )
        if self.quantization_mode is not None:
            raise ValueError(
                f"Layer {self.name!r} has a {self.quantization_mode!r}-"
                "quantized kernel, into which FourierFT does not merge (the "
                "update would be lost to rounding). Keep the adapter "
                "unmerged (its cost is small), or merge into the float model "
                "and quantize afterwards."
            )

    def merge(self, safe_merge=True):
        """Folds delta_W into the kernel for zero-overhead inference.

        While merged the layer costs exactly what the plain layer costs, the
        coefficients are not trainable (training them would not change the
        output) and the adapter cannot be turned off; `unmerge()` restores
        the original kernel bit for bit. Merging twice is a no-op. A
        function compiled before sees the change.

        The sum W + delta_W is formed in float32 and rounded once into the
        kernel's dtype: a float32 kernel (as under `mixed_bfloat16`) holds it
        exactly; a bfloat16 kernel (dtype policy `bfloat16`) holds it to 8
        bits, like W itself, so merged and unmerged outputs differ by that
        rounding (the unmerged paths round their bfloat16 outputs alike; no
        path is more exact under bfloat16 compute).

        Args:
            safe_merge: If True (default), check the merged kernel for
                NaN/Inf first and raise (leaving the layer unchanged) instead
                of merging.
        """
        if self.merged:
            return
        self._check_mergeable()
        if not self.adapter_enabled:
            raise ValueError(
                f"Layer {self.name!r}: the adapter is turned off; turn it on "
                "before merging."
            )
        kernel = keras_internals.kernel_variable(self)
        original = ops.convert_to_numpy(kernel).copy()
        merged = self._merged_kernel_value(original, safe_merge)
        kernel.assign(merged)
        self._fourierft.merged = _Merged(
            original, _digest(merged), self.coefficients.trainable
        )
        self.coefficients.trainable = False
        self._sync_gate()

    def unmerge(self, force=False):
        """Restores the original kernel exactly after `merge()`.

        Args:
            force: Restore even if the kernel was changed while merged (e.g.
                by `set_weights`); by default that raises, since restoring
                would silently undo the change.
        """
        record = self._fourierft.merged
        if record is None:
            return
        kernel = keras_internals.kernel_variable(self)
        if not force and _digest(ops.convert_to_numpy(kernel)) != record.digest:
            raise ValueError(
                f"Layer {self.name!r}: its kernel was changed while the "
                "adapter was merged into it (e.g. by `set_weights`). "
                "Unmerging would overwrite that change with the kernel saved "
                "at merge time. Call `unmerge(force=True)` to do so anyway."
            )
        kernel.assign(record.original)
        self.coefficients.trainable = record.trainable
        self._fourierft.merged = None
        self._sync_gate()

    def _merged_kernel_value(self, original, safe_merge):
        delta = ops.convert_to_numpy(self.delta_weight())
        work = np.result_type(original.dtype, np.float32)
        merged = (original.astype(work) + delta.astype(work)).astype(original.dtype)
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
            return self._fourierft.merged.original.copy()
        return ops.convert_to_numpy(keras_internals.kernel_variable(self))

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
        if self.adapter_enabled:
            kernel = self._merged_kernel_value(original, safe_merge)
        plain_class = _PLAIN_CLASS[type(self)]
        layer = plain_class.from_config(self._plain_config())
        layer.build(geometry.plain_input_shape(self))
        layer.kernel.assign(kernel)
        if self.bias is not None:
            layer.bias.assign(ops.convert_to_numpy(self.bias))
        return layer

    def _plain_config(self):
        config = super().get_config()
        for name in FourierFTConfig.__dataclass_fields__:
            config.pop(name, None)
        return config


class _FourierFTMixin(_ComputePaths, _MergeState, keras_internals.CountsOwnVariables):
    """What `FourierDense` and `FourierEinsumDense` share."""

    def __init__(self, *args, **kwargs):
        if args and isinstance(args[0], keras.layers.Layer):
            raise TypeError(
                f"{type(self).__qualname__} is a Keras layer built from its "
                "own arguments (units/equation, then FourierFT settings). To "
                "add an adapter to an existing layer, call "
                "`keras_fourierft.enable_fourierft(layer, ...)` (0.2's "
                "`adapt_layer`): it adapts the layer in place."
            )
        if kwargs.get("lora_rank"):
            raise ValueError(
                f"{type(self).__qualname__} does not take `lora_rank`: "
                "FourierFT and LoRA cannot be stacked on one layer. Drop "
                "`lora_rank`, or use a plain Keras layer for LoRA."
            )
        config = FourierFTConfig(
            **{
                name: kwargs.pop(name)
                for name in FourierFTConfig.__dataclass_fields__
                if name in kwargs
            }
        )
        super().__init__(*args, **kwargs)
        _check_no_constraint(self)
        self._init_fourierft(config)

    def __repr__(self):
        return f"<{type(self).__qualname__} name={self.name}, built={self.built}>"

    def build(self, input_shape):
        super().build(input_shape)
        geometry.check_size(self, self.n_frequency)
        distribution.check_coefficient_layout(self, self.n_frequency)
        with keras_internals.unlocked_tracker(self):
            self._build_fourierft()

    def enable_lora(self, *args, **kwargs):
        """Refused: FourierFT and LoRA cannot be stacked on one layer."""
        raise ValueError(
            f"Layer {self.name!r} has a FourierFT adapter; FourierFT and LoRA "
            "cannot be stacked on one layer. Unload the FourierFT adapter "
            "first (`keras_fourierft.unload_fourierft(layer)`) to use LoRA."
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantizes the base kernel; the adapter stays in float32.

        A merged adapter is unmerged first: the original kernel is quantized
        and the adapter runs unmerged on it, as on every quantized base.
        """
        if mode not in QUANTIZATION_MODES[1:]:
            raise ValueError(
                f"Layer {self.name!r} has a FourierFT adapter, which runs on "
                f"'int8', 'int4' and 'float8' bases; mode {mode!r} is not "
                "supported. Quantize the base model before adding the "
                "adapter, with one of those modes."
            )
        self.unmerge()
        super().quantize(mode, type_check=False, config=config)

    def _init_fourierft(self, config):
        before = set(vars(self))
        self._fourierft = _AdapterState(self, config)
        self._fourierft.added |= set(vars(self)) - before

    def _build_fourierft(self):
        state = self._fourierft
        state.bind(geometry.float_kernel_shape(self), getattr(self, "equation", None))
        keras_internals.kernel_variable(self).trainable = False
        if self.bias is not None:
            self.bias.trainable = False
        with _recording(self):
            self.coefficients = self.add_weight(
                name="coefficients",
                shape=(self.n_frequency,),
                initializer=_stored_initializer(state.config),
                dtype="float32",
                trainable=True,
            )
            self._fourierft_active = self._state_variable(
                "fourierft_active", (), "bool", "ones"
            )
        state.gate = self._fourierft_active
        self._sync_gate()

    def _state_variable(self, name, shape, dtype, initializer="zeros"):
        """A non-trainable variable of adapter state (not a layer weight
        that weights files hold: `save_own_variables` leaves it out)."""
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            dtype=dtype,
            trainable=False,
            autocast=False,
        )

    def _create_bank(self, capacity, max_batch_size):
        """Adds an adapter bank's variables (see `_Bank`), all zeros."""
        with (
            distribution.variable_scope(self),
            keras_internals.unlocked_tracker(self),
            _recording(self),
        ):
            self._fourierft_bank = self._state_variable(
                "fourierft_bank", (capacity + 1, self.n_frequency), "float32"
            )
            self._fourierft_bank_rows = self._state_variable(
                "fourierft_bank_rows", (max_batch_size,), "int32"
            )
            self._fourierft_bank_active = self._state_variable(
                "fourierft_bank_active", (), "bool"
            )
        self._fourierft.bank = _Bank(
            self._fourierft_bank,
            self._fourierft_bank_rows,
            self._fourierft_bank_active,
        )

    def _drop_bank(self):
        """Removes the adapter bank's variables again."""
        state = self._fourierft
        if state.bank is None:
            return
        state.bank.active.assign(False)  # for functions compiled with it
        names = ("_fourierft_bank", "_fourierft_bank_rows", "_fourierft_bank_active")
        with keras_internals.unlocked_tracker(self):
            for name in names:
                delattr(self, name)
        state.added -= set(names)
        state.bank = None

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
    def fourierft_config(self):
        """The layer's `FourierFTConfig`."""
        return self._fourierft.config

    @property
    def locations(self):
        """The `(2, n)` frequency locations (output row, input row)."""
        return self._fourierft.locations

    @property
    def _view(self):
        # The 2-D view as `kernel_view` describes it.
        return self._fourierft.view

    @property
    def compute_path(self):
        """`"auto"`, `"dense"` or `"activation"`, see the class docstring."""
        return self._fourierft.config.compute_path

    @compute_path.setter
    def compute_path(self, value):
        state = self._fourierft
        state.config = state.config.replace(compute_path=value)

    @property
    def compute(self):
        """Deprecated name of `compute_path`."""
        warnings.warn(
            "`compute` is renamed `compute_path`.", DeprecationWarning, stacklevel=2
        )
        return self.compute_path

    @compute.setter
    def compute(self, value):
        warnings.warn(
            "`compute` is renamed `compute_path`.", DeprecationWarning, stacklevel=2
        )
        self.compute_path = value

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

    def _load_coefficients(self, values):
        values = self._checked_coefficients(values, "stored FourierFT coefficients")
        was_merged = self.merged
        self.unmerge(force=True)
        self.coefficients.assign(values)
        if was_merged:
            self.merge()

    def adapter_config(self):
        """The settings that define this adapter's spectrum.

        Returns:
            A dict with `in_features`, `out_features` (the 2-D view) and
            `n_frequency`, `scaling`, `seed`, `sampling`, `center_frequency`,
            `bandwidth`.
        """
        view = self._fourierft.view
        config = {
            "in_features": view["in_features"],
            "out_features": view["out_features"],
        }
        config.update({name: getattr(self, name) for name in SPECTRUM_FIELDS})
        return config

    # ------------------------------------------------------------------
    # Serialization block: weights, assets and config of `.keras` files.
    # ------------------------------------------------------------------

    def _base_store_size(self):
        # The entries the plain layer's `load_own_variables` reads: its
        # serialization spec for the mode, less the variables it lacks, as
        # Keras's loader skips them. (Probing Keras's save instead undercounts
        # an int4 layer rebuilt from a config: no `quantization_config`, so
        # no `kernel_zero` entry, although the layer has one to load.)
        absent = {
            "bias": self.bias is None,
            "kernel_zero": not hasattr(self, "kernel_zero"),
            "g_idx": not hasattr(self, "g_idx"),
        }
        names = self.variable_serialization_spec[self.quantization_mode]
        return sum(1 for name in names if not absent.get(name, False))

    def save_own_variables(self, store):
        """Stores the base layer's entries, as the plain layer does.

        The entries (kernel, bias and any quantization scales) sit at the
        indices the plain layer uses, so a full-model weights file keeps the
        base model's layout; a merged kernel is saved unmerged. The
        coefficients go to the adapter's own group (see `_AdapterState`).
        """
        if not self.built:
            return
        base = {}
        super().save_own_variables(base)
        if self.merged:
            base["0"] = self._fourierft.merged.original
        for key, value in base.items():
            store[key] = value

    def load_own_variables(self, store):
        """Loads the plain layer's entries (and 0.2's trailing coefficients).

        The base weights load; the coefficients come from the adapter's own
        group, or, in files written by version 0.2, from the entry after the
        base entries. A merged layer is unmerged, loaded and merged again.
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

    def save_assets(self, dir_path):
        """Writes this adapter's record (`fourierft.json`) for `.keras` files.

        The record holds the settings and the on/off state; Keras gives
        every object of a saved model its own asset directory, named by the
        object's place in the model, which is how `keras_fourierft.load_model`
        finds the layer again (also for models whose config does not list
        their layers, such as KerasHub backbones).
        """
        from keras_fourierft import saving

        saving._write_record(self, dir_path)

    def load_assets(self, dir_path):
        """Restores the on/off state from the record `save_assets` wrote."""
        from keras_fourierft import saving

        record = saving._read_record_file(dir_path)
        if record is not None:
            self.adapter_enabled = record[1]

    def get_config(self):
        config = super().get_config()
        config.update(self.fourierft_config.to_dict())
        return config


def _is_decode_step(token_sizes):
    """Whether a call is one step of JAX's compiled cached decoding.

    KerasHub's causal LMs decode one token per sequence inside a compiled
    loop; on JAX the whole `generate` is one XLA program, which computes the
    loop-invariant `delta_W` once, before the loop.
    """
    if keras.backend.backend() != "jax" or len(token_sizes) < 2:
        return False
    return all(size == 1 for size in token_sizes[1:])


def _work_dtype(dtype):
    """The dtype in which a kernel and a float32 update are added."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float64" if dtype == "float64" else "float32"


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


@keras.saving.register_keras_serializable(
    package="keras_fourierft", name="FourierDense"
)
class FourierDense(
    _FourierFTMixin, keras.layers.Dense, metaclass=keras_internals.ShowsAdaptedName
):
    """A `keras.layers.Dense` with a frozen kernel adapted by FourierFT.

    The kernel `W` and bias are frozen; the only trainable weight is
    `coefficients`, `n_frequency` values placed at fixed random locations of
    a spectrum `F` shaped like the 2-D `(input, output)` view of `W` (see
    `keras_fourierft.spectral.kernel_view`). The update is
    `delta_W = scaling * Re(IDFT2(F))`. With the default `seed` and uniform
    sampling the locations match Hugging Face PEFT's FourierFT exactly, so
    adapters transfer in both directions.

    `compute_path` chooses how a call applies the update (the results agree
    to float32 round-off, and so do the gradients): `"dense"` builds
    `delta_W` with one 2-D FFT and runs one matmul with `W + delta_W`
    (cheapest for small weights); `"activation"` computes `x @ W` by the base
    layer's own computation (float or quantized) plus `x @ delta_W` from the
    FFT of `x`, never forming `delta_W` (cheapest for LLM-size weights);
    `"auto"` (default) picks per call from the static shapes.

    `lr_multiplier` reparametrises the coefficients: the variable stores
    `spectrum / lr_multiplier`, which multiplies their effective learning
    rate under Adam-family optimizers without changing the function or the
    saved spectrum. `merge()` folds `delta_W` into a float kernel for
    inference; a quantized base (`int8`, `int4`, `float8`) runs unmerged.
    On/off and merged state is read at run time from the non-trainable
    boolean variable `fourierft_active`, so compiled functions follow it.

    Args:
        *args: `units` and the other `Dense` arguments (no `lora_rank` and
            no `kernel_constraint`).
        n_frequency: Integer, the number of trainable spectral coefficients.
        scaling: Float, the factor `alpha` of the update.
        seed: Integer, the seed of the frequency locations (PEFT's
            `random_loc_seed`).
        sampling: `"uniform"` (PEFT's) or `"frequency_biased"`.
        center_frequency: Float, `f_c` for frequency-biased sampling.
        bandwidth: Float, `W` for frequency-biased sampling.
        coefficient_initializer: `"normal"` or `"zeros"`.
        lr_multiplier: Positive float, see above (default 30).
        compute_path: `"auto"`, `"dense"` or `"activation"`, see above
            (`compute=` is its deprecated name).
        **kwargs: The arguments of `keras.layers.Dense`.

    Example:

    ```python
    layer = keras_fourierft.FourierDense(64, n_frequency=200)
    y = layer(np.ones((2, 32)))   # built: frozen kernel, 200 coefficients
    layer.merge()                 # zero-overhead inference
    ```
    """

    display_base = "Dense"

    def _linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def _token_axes(self, rank):
        return range(rank - 1)

    def _rows(self, inputs):
        rows = ops.reshape(inputs, (-1, self._fourierft.view["in_features"]))
        leading = ops.shape(inputs)[:-1]

        def restore(update):
            return ops.reshape(update, tuple(leading) + (self.units,))

        return rows, restore


@keras.saving.register_keras_serializable(
    package="keras_fourierft", name="FourierEinsumDense"
)
class FourierEinsumDense(
    _FourierFTMixin,
    keras.layers.EinsumDense,
    metaclass=keras_internals.ShowsAdaptedName,
):
    """A `keras.layers.EinsumDense` with a frozen kernel adapted by FourierFT.

    The update and its settings are those of `FourierDense`, on the 2-D
    `(input features, output features)` view of the kernel that
    `keras_fourierft.spectral.kernel_view` describes (for Keras's attention
    layers, the transposed weight of the matching Hugging Face `nn.Linear`).

    Args:
        *args: `equation`, `output_shape` and the other `EinsumDense`
            arguments (no `lora_rank` and no `kernel_constraint`).
        **kwargs: The FourierFT settings of `FourierDense` and the arguments
            of `keras.layers.EinsumDense`.

    Example:

    ```python
    layer = keras_fourierft.FourierEinsumDense(
        "abc,cde->abde", (None, 12, 64), n_frequency=1000
    )
    y = layer(np.ones((2, 8, 768)))
    ```
    """

    display_base = "EinsumDense"

    def _linear(self, inputs, kernel):
        return ops.einsum(self.equation, inputs, kernel)

    def _layout(self, rank):
        return geometry.row_layout(
            self.equation, geometry.float_kernel_shape(self), rank
        )

    def _token_axes(self, rank):
        return self._layout(rank).token_axes

    def _rows(self, inputs):
        layout = self._layout(len(inputs.shape))
        rows, token_shape = layout.to_rows(inputs, self._fourierft.view["in_features"])

        def restore(update):
            return layout.from_rows(update, token_shape)

        return rows, restore


_ADAPTED_CLASS = {
    keras.layers.Dense: FourierDense,
    keras.layers.EinsumDense: FourierEinsumDense,
}
_PLAIN_CLASS = {adapted: plain for plain, adapted in _ADAPTED_CLASS.items()}
