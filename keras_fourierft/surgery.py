"""`enable_fourierft`: adapt the target layers of any Keras model in place.

No graph is rewired: each target `Dense`/`EinsumDense` is adapted in place
(`layers.adapt_layer`), so Sequential, Functional, subclassed and KerasHub
models, and every container Keras tracks (lists, tuples, dicts), keep their
structure, layer names and weight paths.
"""

import dataclasses
import math
import re

import keras

from keras_fourierft import distribution
from keras_fourierft import keras_internals
from keras_fourierft.config import DEFAULT_LR_MULTIPLIER
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.layers import adapt_layer
from keras_fourierft.layers import check_adaptable
from keras_fourierft.layers import is_adapted
from keras_fourierft.layers import remove_adapter

DEFAULT_TARGET_LAYER_NAMES = ("query", "value", "query_dense", "value_dense")
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
    """Returns the FourierFT-adapted layers of a model, in a stable order.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of `(path, layer)` pairs, one per `FourierDense`/
        `FourierEinsumDense`; `path` is as `walk_layers` gives it.

    Example:

    >>> for path, layer in keras_fourierft.fourier_layers(backbone):
    ...     print(path, layer.n_frequency)
    """
    return [(path, layer) for path, layer in walk_layers(model) if is_adapted(layer)]


def walk_layers(model):
    """Returns `(path, layer)` for every sublayer of a model, depth first.

    A path joins layer names from the model down with `/`. It is stable and
    unique: a name Keras generated (`dense`, `dense_3`, ...) is replaced by
    the class's default name numbered in order among its siblings, so two
    fresh copies of a model give the same paths, and two siblings never
    share one. A layer held in several places is listed once.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of `(path, layer)` pairs.

    Example:

    >>> [path for path, _ in keras_fourierft.walk_layers(model)]
    ['query', 'dense', 'dense_1']
    """
    entries, seen = [], set()

    def visit(layer, prefix):
        used = {}
        for child in keras_internals.child_layers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            name = _unique(_stable_name(child), used)
            path = prefix + name
            entries.append((path, child))
            visit(child, path + "/")

    visit(model, "")
    return entries


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
    compute="auto",
    verbose=False,
):
    """Adapts a built Keras/KerasHub model with FourierFT, in place.

    Targets are the `Dense`/`EinsumDense` layers whose `layer.name` is in
    `target_layer_names`, or whose path (see `walk_layers`) matches one of
    the regular expressions `target_paths`. By default the targets are the
    layers a KerasHub backbone names in `default_lora_layer_names()` (its
    query and value projections, e.g. Gemma 3's `query_proj`/`value_proj`),
    or, for other models, layers named `query`, `value`, `query_dense` or
    `value_dense`. Each target is adapted in place (see `adapt_layer`): the
    model's structure, layer names, variable paths and weight-file layout
    stay as they were, in every kind of model and container.

    Everything is checked before anything changes: on a bad argument or a
    target that cannot be adapted the model is left untouched.

    Freezing rule: afterwards the only trainable variables are the
    coefficients, plus
    - for a KerasHub task model (one with a `backbone`), every weight outside
      the backbone (the task head);
    - the weights of layers named in `trainable_layers` (names or path
      regexes);
    - biases by `bias`: `"none"` (PEFT's default), `"fourier_only"` (the
      adapted layers' biases) or `"all"` (every variable named `bias`).
    Freezing acts on variables (`variable.trainable`); the layers holding a
    variable that trains are set `trainable` (also in a model frozen with
    `model.trainable = False`), other layers keep their flag. Quantized
    kernels and their scales stay as Keras sets them. Compile the model
    after enabling.

    Several devices (JAX): build or load the model, enable FourierFT and
    train under one `keras.distribution` (`DataParallel`, or `ModelParallel`
    with a `LayoutMap`, e.g. KerasHub's `Backbone.get_layout_map(mesh)`).
    The coefficients are Keras variables like any other: replicated, unless
    a `LayoutMap` entry matches `<layer path>/coefficients` (it must give a
    one-axis layout that divides `n_frequency`); the frozen kernels keep
    their layout. A model whose variables live under another distribution
    (or none) than the current one is refused, untouched.

    Quantized bases: `model.quantize("int8")` (or `"int4"`, `"float8"`)
    before or after enabling; only the coefficients train.

    Several devices: on TensorFlow, enable inside the `strategy.scope()`
    the model was built in (or outside any scope: the coefficients join
    the strategy that owns the kernels); enabling inside the scope of a
    strategy that does not own the model raises before anything changes.
    See `docs/distributed.md`.

    Args:
        model: A built Keras model (Sequential, Functional, subclassed or
            KerasHub backbone/task).
        n_frequency: Integer, coefficients per adapted layer.
        scaling: Float, the factor `alpha`.
        seed: Integer, the frequency-location seed (PEFT's `random_loc_seed`).
        target_layer_names: Names of layers to adapt (a list; a single string
            is one name).
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
        lr_multiplier: Float, see `FourierDense`. The default (30) lets a
            single Adam-family optimizer with an ordinary learning rate
            (1e-3 to 5e-3) train both a task head and the coefficients, which
            want a 10-100x larger learning rate.
        compute: `"auto"`, `"dense"` or `"activation"`, see `FourierDense`.
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
    config = FourierFTConfig(
        n_frequency=n_frequency,
        scaling=scaling,
        seed=seed,
        sampling=sampling,
        center_frequency=center_frequency,
        bandwidth=bandwidth,
        coefficient_initializer=coefficient_initializer,
        lr_multiplier=lr_multiplier,
        compute=compute,
    )
    _check_model(model)
    distribution.check_placement(model.weights, f"model {model.name!r}")
    names = _as_names("target_layer_names", target_layer_names)
    paths = _as_names("target_paths", target_paths)
    keep = _as_names("trainable_layers", trainable_layers)
    if names is None and paths is None:
        names = default_target_layer_names(model)
    walk = walk_layers(model)
    targets = _select_targets(walk, names, paths, blocks)
    plans = []
    for path, layer in targets:
        n = _pattern_value(n_frequency_pattern, path, config.n_frequency)
        try:
            layer_config = config.replace(n_frequency=n)
        except ValueError as error:
            raise ValueError(f"Layer {path!r}: {error}") from None
        try:
            check_adaptable(layer, layer_config)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Cannot adapt {path!r}: {error}") from None
        plans.append((path, layer, layer_config))
    adapted = []
    for path, layer, layer_config in plans:
        adapt_layer(layer, layer_config)
        layer.model_path = path
        adapted.append((path, layer))
    _freeze(model, bias, keep)
    _straight_through_logits(walk)
    reset_compiled_functions(model)
    summary = _summarize(model, adapted)
    if verbose:
        print(summary)
    return summary


def enable_fourierft_on_paths(model, configs, source="The adapters"):
    """Adapts exactly the layers at the given paths, each with its config.

    Used to rebuild the adapters a file describes (adapter files, PEFT
    folders, `.keras` records). New coefficients start at zero.

    Args:
        model: A built Keras model without adapters.
        configs: Dict `{layer path: FourierFTConfig}` (paths as `walk_layers`
            gives them); the configs may differ in `n_frequency` only.
        source: How an error message names where the configs came from.

    Returns:
        A `FourierFTSummary`.
    """
    shared = {config.replace(n_frequency=1) for config in configs.values()}
    if len(shared) > 1:
        raise ValueError(
            f"{source} mix scaling/seed/sampling settings across layers; "
            "enable FourierFT on the model yourself, then load the weights."
        )
    (settings,) = shared
    patterns = {
        f"^{re.escape(path)}$": config.n_frequency for path, config in configs.items()
    }
    values = settings.replace(coefficient_initializer="zeros").to_dict()
    values.pop("n_frequency")
    return enable_fourierft(
        model,
        n_frequency=next(iter(configs.values())).n_frequency,
        target_paths=list(patterns),
        n_frequency_pattern=patterns,
        **values,
    )


def _straight_through_logits(walk):
    # Keras's int8 reversible embedding (a causal LM's output projection)
    # gives its logits no input gradient; see keras_internals.
    for _, layer in walk:
        if isinstance(layer, keras.layers.ReversibleEmbedding):
            keras_internals.give_logits_an_input_gradient(layer)


def default_target_layer_names(model):
    """The layer names `enable_fourierft` targets when none are given.

    A KerasHub backbone (or a task model's backbone) says which layers an
    adapter should target with `default_lora_layer_names()`; other models
    get `query`, `value`, `query_dense` and `value_dense`.

    Args:
        model: A Keras model.

    Returns:
        A list of layer names.
    """
    for candidate in (model, getattr(model, "backbone", None)):
        method = getattr(candidate, "default_lora_layer_names", None)
        if callable(method):
            names = list(method())
            if names:
                return names
    return list(DEFAULT_TARGET_LAYER_NAMES)


def set_fourierft_enabled(model, enabled):
    """Turns all FourierFT adapters of a model on or off.

    Off, every adapted layer computes exactly its frozen base layer. A merged
    model refuses (nothing changes): unmerge first.

    Args:
        model: A model adapted with `enable_fourierft`.
        enabled: Boolean.
    """
    layers = _require_adapted(model)
    merged = [path for path, layer in layers if layer.merged]
    if merged and not enabled:
        raise ValueError(
            f"The adapters of model {model.name!r} are merged into the kernels "
            f"(e.g. {merged[0]!r}), so they cannot be turned off. Call "
            "`unmerge_fourierft(model)` first."
        )
    for _, layer in layers:
        layer.adapter_enabled = bool(enabled)
    reset_compiled_functions(model)


def merge_fourierft(model, safe_merge=True):
    """Folds every adapter's delta_W into its kernel (zero-overhead inference).

    While merged, the coefficients do not train and the adapters cannot be
    turned off; `unmerge_fourierft` restores the original kernels exactly.
    Quantized layers refuse (they run unmerged).

    Args:
        model: A model adapted with `enable_fourierft`.
        safe_merge: If True (default), check for NaN/Inf before merging; on
            failure no layer is left merged.
    """
    layers = _require_adapted(model)
    for path, layer in layers:
        if layer.quantization_mode is not None:
            raise ValueError(
                f"Layer {path!r} is {layer.quantization_mode!r}-quantized; "
                "FourierFT does not merge into quantized kernels (the update "
                "would be lost to rounding). Keep the adapters unmerged, or "
                "merge in the float model and quantize afterwards."
            )
        if not layer.adapter_enabled:
            raise ValueError(
                f"The adapter of layer {path!r} is turned off; turn the "
                "adapters on before merging."
            )
    _merge_all([layer for _, layer in layers], safe_merge)
    reset_compiled_functions(model)


def _merge_all(layers, safe_merge):
    """Merges every layer, or none: on a failure the merged ones unmerge."""
    done = []
    try:
        for layer in layers:
            if not layer.merged:
                layer.merge(safe_merge=safe_merge)
                done.append(layer)
    except ValueError:
        for layer in done:
            layer.unmerge(force=True)
        raise


def unmerge_fourierft(model):
    """Restores every adapted kernel exactly after `merge_fourierft`.

    Args:
        model: A model adapted with `enable_fourierft`.
    """
    layers = _require_adapted(model)
    for path, layer in layers:
        if layer.merged:
            try:
                layer.unmerge()
            except ValueError as error:
                raise ValueError(f"Layer {path!r}: {error}") from None
    reset_compiled_functions(model)


def unload_fourierft(model, merge=True):
    """Turns every adapted layer back into a plain `Dense`/`EinsumDense`.

    In place: with `merge=True` the plain layers hold `W + delta_W`, so the
    model computes what the adapted model computed but needs nothing from
    this package (save it with `model.save()` or KerasHub's
    `save_to_preset()`). With `merge=False` the original weights come back.
    Trainability of the other weights is left as it is.

    Args:
        model: A model adapted with `enable_fourierft`.
        merge: Boolean, whether to keep the adapters' effect.

    Returns:
        The same model.
    """
    layers = _require_adapted(model)
    if merge:
        for path, layer in layers:
            if layer.quantization_mode is not None:
                raise ValueError(
                    f"Layer {path!r} is quantized; unload with merge=False or "
                    "from the float model."
                )
        _merge_all([layer for _, layer in layers if layer.adapter_enabled], True)
    for _, layer in layers:
        remove_adapter(layer, merge=merge)
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


def owned_variables(model):
    """Returns `(path, variable)` for every variable, by owning layer's path.

    Args:
        model: A Keras model or layer.

    Returns:
        A list of `(path, variable)` pairs, `path` being
        `<layer path>/<variable name>` (paths as `walk_layers` gives them).
    """
    result = []
    for path, layer in [("", model)] + walk_layers(model):
        for variable in _own_variables(layer):
            result.append((f"{path}/{variable.name}".lstrip("/"), variable))
    return result


def _own_variables(layer):
    children = keras_internals.child_layers(layer)
    inside = {id(v) for child in children for v in child.weights}
    return [v for v in layer.weights if id(v) not in inside]


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


def _as_names(argument, value):
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        names = list(value)
    except TypeError:
        raise TypeError(
            f"`{argument}` must be a list of strings. Received: {value!r}"
        ) from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"`{argument}` must be a list of strings. Received: {value!r}"
            )
    return names


def _to_snake_case(name):
    # As Keras names layers by default (keras.src.utils.naming).
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _stable_name(layer):
    """The layer's name, or its class's default name if Keras generated it."""
    default = _to_snake_case(type(layer).__name__)
    if re.fullmatch(re.escape(default) + r"(_\d+)?", layer.name):
        return default
    return layer.name


def _unique(name, used):
    count = used.get(name, 0)
    used[name] = count + 1
    return name if count == 0 else f"{name}_{count}"


def _block_index(path):
    for part in path.split("/"):
        match = _BLOCK_PATTERN.search(part)
        if match:
            return int(match.group(1))
    return None


def _select_targets(walk, names, paths, blocks):
    names = set(names or ())
    try:
        patterns = [re.compile(p) for p in paths or ()]
    except re.error as error:
        raise ValueError(
            f"Invalid regular expression in `target_paths`: {error}"
        ) from None
    candidates, targets = [], []
    for path, layer in walk:
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
        for path, layer in walk_layers(model):
            if layer.name in trainable_layers or any(p.search(path) for p in patterns):
                keep |= {id(v) for v in layer.weights}
    adapted = [layer for _, layer in fourier_layers(model)]
    keep |= {id(layer.coefficients) for layer in adapted}
    if bias == "fourier_only":
        keep |= {id(layer.bias) for layer in adapted if layer.bias is not None}
    if bias == "all":
        keep |= {id(v) for v in model.weights if v.name == "bias"}
    _make_trainable(model, keep)
    for variable in model.weights:
        # float8 scaling state updates with its layer, as Keras sets it.
        if id(variable) not in keep and not variable.overwrite_with_gradient:
            variable.trainable = False


def _make_trainable(model, keep):
    """Sets `trainable = True` on every layer holding a variable in `keep`.

    Keras's setter turns on the variables a layer trains (never quantized
    kernels or their scales) and those of its sublayers; the flags of layers
    without such a variable are put back, parents before children.
    """
    layers = [model] + [layer for _, layer in walk_layers(model)]
    flags = [layer.trainable for layer in layers]
    # Off first: on TensorFlow, assigning an unchanged flag does nothing.
    model.trainable = False
    model.trainable = True
    for layer, flag in zip(layers, flags, strict=True):
        if not any(id(v) in keep for v in layer.weights):
            layer.trainable = flag


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
