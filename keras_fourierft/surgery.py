"""Model surgery: put FourierFT adapters into any Keras or KerasHub model."""

import dataclasses
import math
import re

import keras

from keras_fourierft.layers import FourierDense
from keras_fourierft.layers import check_wrappable
from keras_fourierft.layers import kernel_view

DEFAULT_TARGET_LAYER_NAMES = ("query", "value", "query_dense", "value_dense")
DEFAULT_LR_MULTIPLIER = 30.0
BIAS_MODES = ("none", "all", "fourier_only")
_BLOCK_PATTERN = re.compile(r"(?:layer|block)s?_(\d+)$")


@dataclasses.dataclass
class AdaptedLayer:
    """One adapted layer in a `FourierFTSummary`."""

    path: str
    in_features: int
    out_features: int
    n_frequency: int


@dataclasses.dataclass
class FourierFTSummary:
    """What `enable_fourierft` did: adapted layers and parameter counts.

    Attributes:
        layers: List of `AdaptedLayer` (path, 2-D shape, n_frequency).
        coefficient_params: Integer, the trainable spectral coefficients.
        other_trainable_params: Integer, other trainable weights (task head,
            biases).
        total_params: Integer, all weights of the model.
    """

    layers: list
    coefficient_params: int
    other_trainable_params: int
    total_params: int

    @property
    def trainable_params(self):
        """All trainable weights: coefficients plus the others."""
        return self.coefficient_params + self.other_trainable_params

    def __str__(self):
        lines = [f"{'adapted layer':<60} {'in x out':>13} {'n':>7}"]
        for layer in self.layers:
            shape = f"{layer.in_features}x{layer.out_features}"
            lines.append(f"{layer.path:<60} {shape:>13} {layer.n_frequency:>7}")
        percent = 100.0 * self.trainable_params / max(self.total_params, 1)
        lines.append(
            f"trainable params: {self.trainable_params:,} "
            f"(FourierFT coefficients: {self.coefficient_params:,}, other: "
            f"{self.other_trainable_params:,}) || all params: "
            f"{self.total_params:,} || trainable%: {percent:.4f}"
        )
        return "\n".join(lines)


def fourier_layers(model):
    """Returns the `FourierDense` layers of a model, in a stable order.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of `(path, FourierDense)` pairs; `path` is the layer's path of
        names from the model (auto-generated Keras names lose their numeric
        suffix, so two fresh copies of a model give the same paths).

    Example:

    >>> for path, layer in keras_fourierft.fourier_layers(backbone):
    ...     print(path, layer.n_frequency)
    """
    return [
        (path, layer)
        for path, layer, _ in _walk(model)
        if isinstance(layer, FourierDense)
    ]


def enable_fourierft(
    model,
    n_frequency=1000,
    scaling=150.0,
    seed=777,
    target_layer_names=None,
    target_paths=None,
    blocks=None,
    n_frequency_pattern=None,
    bias="none",
    trainable_layers=None,
    sampling="uniform",
    center_frequency=None,
    bandwidth=None,
    coefficient_initializer="normal",
    lr_multiplier=DEFAULT_LR_MULTIPLIER,
    verbose=False,
):
    """Adapts a built Keras/KerasHub model with FourierFT, in place.

    Targets are the `Dense`/`EinsumDense` layers whose `layer.name` is in
    `target_layer_names` (by default the query and value projections, as
    KerasHub's `enable_lora` picks them), or whose path (see
    `fourier_layers`) matches one of the regular expressions
    `target_paths`. Each target is replaced by a `FourierDense` that takes
    over its variables, so the model's weight layout, full-model
    `save_weights`/`load_weights` files and variable paths keep working.

    Freezing rule: afterwards the only trainable variables are the
    coefficients, plus
    - for a KerasHub task model (one with a `backbone`), every weight outside
      the backbone (the task head);
    - the weights of layers named in `trainable_layers` (names or path
      regexes);
    - biases by `bias`: `"none"` (PEFT's default), `"fourier_only"` (the
      adapted layers' biases) or `"all"` (every variable named `bias`).
    Freezing acts on variables (`variable.trainable`), so layers keep their
    `trainable` flag. Compile the model after enabling.

    Load pretrained weights (e.g. `from_preset`) before enabling: KerasHub's
    converters assign to `layer.kernel`, which a `FourierDense` keeps frozen
    but does not expose for assignment.

    Args:
        model: A built Keras model (Sequential, Functional, subclassed or
            KerasHub backbone/task).
        n_frequency: Integer, coefficients per adapted layer.
        scaling: Float, the factor `alpha`.
        seed: Integer, the frequency-location seed (PEFT's `random_loc_seed`).
        target_layer_names: Names of layers to adapt.
        target_paths: Regular expressions searched in layer paths.
        blocks: Optional list of transformer block indices: only targets
            inside those blocks are adapted (a block is a path component
            ending in `layer_<i>` or `block_<i>`, as KerasHub names them).
        n_frequency_pattern: Optional dict `{regex: n}` overriding
            `n_frequency` for layers whose path matches (PEFT's
            `n_frequency_pattern`); the first match wins.
        bias: `"none"`, `"fourier_only"` or `"all"`, see above.
        trainable_layers: Names or path regexes of layers to keep trainable.
        sampling: `"uniform"` or `"frequency_biased"`, see
            `frequency_locations`.
        center_frequency: Float, for frequency-biased sampling.
        bandwidth: Float, for frequency-biased sampling.
        coefficient_initializer: `"normal"` (PEFT's default) or `"zeros"`.
        lr_multiplier: Float, see `FourierDense`. The default lets a single
            Adam-family optimizer with an ordinary learning rate (1e-3 to
            5e-3) train both a task head and the coefficients, which want a
            10-100x larger learning rate.
        verbose: If True, print the summary.

    Returns:
        A `FourierFTSummary`.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    summary = keras_fourierft.enable_fourierft(backbone, n_frequency=1000)
    print(summary)
    ```
    """
    if bias not in BIAS_MODES:
        raise ValueError(f"`bias` must be one of {BIAS_MODES}. Received: {bias!r}")
    _check_model(model)
    walk = _walk(model)
    targets = _select_targets(walk, target_layer_names, target_paths, blocks)
    plans = []
    for path, layer in targets:
        n = _pattern_value(n_frequency_pattern, path, n_frequency)
        _validate_target(path, layer, n)
        plans.append((path, layer, n))
    parents = {id(layer): parent_list for _, layer, parent_list in walk}
    adapted = []
    for path, layer, n in plans:
        wrapper = FourierDense(
            layer,
            n_frequency=n,
            scaling=scaling,
            seed=seed,
            sampling=sampling,
            center_frequency=center_frequency,
            bandwidth=bandwidth,
            coefficient_initializer=coefficient_initializer,
            lr_multiplier=lr_multiplier,
        )
        wrapper.model_path = path
        _replace_layer(model, parents[id(layer)], layer, wrapper)
        adapted.append((path, wrapper))
    _freeze(model, bias, trainable_layers)
    reset_compiled_functions(model)
    summary = _summarize(model, adapted)
    if verbose:
        print(summary)
    return summary


def set_fourierft_enabled(model, enabled):
    """Turns all FourierFT adapters of a model on or off.

    Off, every adapted layer computes exactly its frozen base layer.

    Args:
        model: A model adapted with `enable_fourierft`.
        enabled: Boolean.
    """
    for _, layer in _require_adapted(model):
        layer.adapter_enabled = bool(enabled)
    reset_compiled_functions(model)


def merge_fourierft(model, safe_merge=True):
    """Folds every adapter's delta_W into its kernel (zero-overhead inference).

    Args:
        model: A model adapted with `enable_fourierft`.
        safe_merge: If True (default), check for NaN/Inf before merging; on
            failure no layer is left merged.
    """
    layers = _require_adapted(model)
    try:
        for _, layer in layers:
            layer.merge(safe_merge=safe_merge)
    except ValueError:
        for _, layer in layers:
            layer.unmerge()
        raise
    reset_compiled_functions(model)


def unmerge_fourierft(model):
    """Restores every adapted kernel exactly after `merge_fourierft`.

    Args:
        model: A model adapted with `enable_fourierft`.
    """
    for _, layer in _require_adapted(model):
        layer.unmerge()
    reset_compiled_functions(model)


def unload_fourierft(model, merge=True):
    """Replaces every `FourierDense` by a plain `Dense`/`EinsumDense`, in place.

    With `merge=True` the plain layers hold `W + delta_W`, so the model
    computes what the adapted model computed but needs nothing from this
    package: save it with `model.save()` or KerasHub's `save_to_preset()`.
    With `merge=False` the original weights come back. Trainability of the
    other weights is left as it is.

    Args:
        model: A model adapted with `enable_fourierft`.
        merge: Boolean, whether to keep the adapters' effect.

    Returns:
        The same model.
    """
    layers = _require_adapted(model)
    parents = {id(layer): parent_list for _, layer, parent_list in _walk(model)}
    plains = []
    for _, layer in layers:
        if merge:
            plain = layer.to_plain_layer(safe_merge=True)
        else:
            was_enabled = layer.adapter_enabled
            layer.adapter_enabled = False
            plain = layer.to_plain_layer()
            layer.adapter_enabled = was_enabled
        plains.append((layer, plain))
    for layer, plain in plains:
        _replace_layer(model, parents[id(layer)], layer, plain)
    reset_compiled_functions(model)
    return model


def reset_compiled_functions(model):
    """Drops a model's cached train/test/predict functions.

    Needed after anything that changes what `call` traces (enabling,
    merging, turning adapters on or off); the next `fit`/`predict` traces
    again.

    Args:
        model: A Keras model.
    """
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def _require_adapted(model):
    layers = fourier_layers(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no FourierFT adapters. Call "
            "`keras_fourierft.enable_fourierft(model, ...)` first."
        )
    return layers


def _check_model(model):
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"enable_fourierft expects a Keras model. Received {type(model)}."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built. Build it (call it on data, or "
            "load it with `from_preset`) before enabling FourierFT."
        )
    existing = fourier_layers(model)
    if existing:
        raise ValueError(
            f"FourierFT is already enabled on model {model.name!r} "
            f"({len(existing)} adapted layers, e.g. {existing[0][0]!r}). Enable "
            "it once; to change the adapters, call `unload_fourierft(model, "
            "merge=False)` first."
        )


def _canonical_name(layer):
    """The layer's name, without the numeric suffix Keras adds to auto names."""
    default = keras.src.utils.naming.to_snake_case(type(layer).__name__)
    if re.fullmatch(re.escape(default) + r"(_\d+)?", layer.name):
        return default
    return layer.name


def _walk(model):
    """Depth-first walk: `(path, layer, [(parent, ...)])` for each sublayer.

    The third item lists every parent that holds the layer, so a replacement
    can update all references.
    """
    entries, index = [], {}

    def visit(layer, prefix):
        for child in layer._layers:
            if id(child) in index:
                entries[index[id(child)]][2].append(layer)
                continue
            path = f"{prefix}{_canonical_name(child)}"
            index[id(child)] = len(entries)
            entries.append((path, child, [layer]))
            visit(child, path + "/")

    visit(model, "")
    return entries


def _block_index(path):
    for part in path.split("/"):
        match = _BLOCK_PATTERN.search(part)
        if match:
            return int(match.group(1))
    return None


def _select_targets(walk, names, paths, blocks):
    if names is None and paths is None:
        names = DEFAULT_TARGET_LAYER_NAMES
    names = set(names or ())
    patterns = [re.compile(p) for p in paths or ()]
    candidates, targets = [], []
    for path, layer, _ in walk:
        is_linear = isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
        if is_linear:
            candidates.append(path)
        matched = layer.name in names or any(p.search(path) for p in patterns)
        if not matched:
            continue
        if blocks is not None and _block_index(path) not in set(blocks):
            continue
        if not is_linear:
            raise TypeError(
                f"Target layer {path!r} is a {type(layer).__name__}; FourierFT "
                "adapts Dense and EinsumDense layers only. Narrow "
                "`target_layer_names`/`target_paths`."
            )
        targets.append((path, layer))
    if not targets:
        shown = ", ".join(candidates[:30]) or "none"
        raise ValueError(
            f"No layer matched target_layer_names={sorted(names)}, "
            f"target_paths={paths}, blocks={blocks}. Dense/EinsumDense layers "
            f"of this model: {shown}" + (" ..." if len(candidates) > 30 else "")
        )
    return targets


def _pattern_value(pattern, path, default):
    for key, value in (pattern or {}).items():
        if re.search(key, path):
            return value
    return default


def _validate_target(path, layer, n_frequency):
    if not layer.built:
        raise ValueError(f"Target layer {path!r} is not built; build the model first.")
    try:
        check_wrappable(layer)
    except (TypeError, ValueError) as error:
        raise type(error)(f"Cannot adapt {path!r}: {error}") from None
    view = kernel_view(layer, layer.kernel.shape)
    size = view["in_features"] * view["out_features"]
    if not isinstance(n_frequency, int) or not 0 < n_frequency <= size:
        raise ValueError(
            f"n_frequency={n_frequency!r} does not fit layer {path!r}: its "
            f"{view['in_features']}x{view['out_features']} weight has {size} "
            "entries. Use a positive n_frequency of at most that (e.g. via "
            "`n_frequency_pattern`)."
        )


def _replace_layer(model, parents, old, new):
    for parent in parents:
        _replace_in_graph(getattr(parent, "_functional", None), old, new)
        _replace_in_graph(parent, old, new)
        tracker = parent._tracker
        if tracker.is_in_store("layers", old):
            tracker.replace_tracked_value("layers", old, new)
        # On the torch backend layers are `torch.nn.Module`s, which keep
        # their sublayers in `_modules` rather than in the instance dict.
        modules = getattr(parent, "_modules", None)
        for name, value in list((modules or {}).items()):
            if value is old:
                modules[name] = new
        for name, value in list(vars(parent).items()):
            if name in ("_layers", "_tracker", "_modules"):
                continue
            if value is old:
                object.__setattr__(parent, name, new)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new


def _replace_in_graph(function, old, new):
    """Points a Functional graph's nodes for `old` at `new`."""
    operations = getattr(function, "_operations", None)
    if operations is None or not any(op is old for op in operations):
        return
    nodes = list(old._inbound_nodes)
    for node in nodes:
        node.operation = new
        for tensor in node.outputs:
            tensor._keras_history = tensor._keras_history._replace(operation=new)
    new._inbound_nodes = nodes
    new._outbound_nodes = list(old._outbound_nodes)
    function._operations = [new if op is old else op for op in operations]
    for depth, ops in function._operations_by_depth.items():
        function._operations_by_depth[depth] = [new if op is old else op for op in ops]
    old_prefix = f"{id(old)}_ib-"
    function._nodes = {
        key.replace(old_prefix, f"{id(new)}_ib-", 1)
        if key.startswith(old_prefix)
        else key
        for key in function._nodes
    }


def _freeze(model, bias, trainable_layers):
    keep = set()
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, keras.layers.Layer):
        inside = {id(v) for v in backbone.weights}
        preprocessor = getattr(model, "preprocessor", None)
        if isinstance(preprocessor, keras.layers.Layer):
            inside |= {id(v) for v in preprocessor.weights}
        keep |= {id(v) for v in model.weights if id(v) not in inside}
    if trainable_layers:
        patterns = [re.compile(p) for p in trainable_layers]
        for path, layer, _ in _walk(model):
            if layer.name in trainable_layers or any(p.search(path) for p in patterns):
                keep |= {id(v) for v in layer.weights}
    adapted = [layer for _, layer in fourier_layers(model)]
    coefficients = {id(layer.coefficients) for layer in adapted}
    if bias == "fourier_only":
        keep |= {id(layer.bias) for layer in adapted if layer.bias is not None}
    for variable in model.weights:
        is_bias = bias == "all" and variable.name == "bias"
        variable.trainable = (
            id(variable) in coefficients or id(variable) in keep or is_bias
        )


def _summarize(model, adapted):
    layers = []
    for path, layer in adapted:
        view = layer._view
        layers.append(
            AdaptedLayer(
                path, view["in_features"], view["out_features"], layer.n_frequency
            )
        )
    coefficients = sum(layer.n_frequency for layer in layers)
    trainable = sum(_size(v) for v in model.weights if v.trainable)
    total = sum(_size(v) for v in model.weights)
    return FourierFTSummary(layers, coefficients, trainable - coefficients, total)


def _size(variable):
    return math.prod(variable.shape)


def walk_layers(model):
    """Returns `(path, layer)` for every sublayer of a model, depth first.

    Paths are those of `fourier_layers`: layer names from the model down,
    auto-generated names without their numeric suffix.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of `(path, layer)` pairs.
    """
    return [(path, layer) for path, layer, _ in _walk(model)]


def owned_variables(model):
    """Returns `(path, variable)` for every variable, by owning layer's path.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of `(path, variable)` pairs, `path` being
        `<layer path>/<variable name>`.
    """
    result = []
    for path, layer in [("", model)] + walk_layers(model):
        for variable in layer._trainable_variables + layer._non_trainable_variables:
            result.append((f"{path}/{variable.name}".lstrip("/"), variable))
    return result
