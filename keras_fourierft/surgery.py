"""`enable_fourierft` and the functions that act on adapted models or layers.

No graph is rewired: each target `Dense`/`EinsumDense` is adapted in place,
so Sequential, Functional, subclassed and KerasHub models, and every
container Keras tracks (lists, tuples, dicts), keep their structure, layer
names and weight paths.
"""

import dataclasses
import math
import numbers
import re
import types

import keras

from keras_fourierft import distribution
from keras_fourierft import keras_internals
from keras_fourierft.config import DEFAULT_LR_MULTIPLIER  # noqa: F401 (examples)
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.layers import adapt_in_place
from keras_fourierft.layers import check_adaptable
from keras_fourierft.layers import is_adapted
from keras_fourierft.layers import remove_in_place

_DEFAULT_TARGETS = ("query", "value", "query_dense", "value_dense")
_BIAS_MODES = ("none", "all", "fourier_only")
_BLOCK_PATTERN = re.compile(r"(?:layer|block)s?_(\d+)$")
_LINEAR = (keras.layers.Dense, keras.layers.EinsumDense)


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
        total_params: Integer, all weights of the target.
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


@dataclasses.dataclass(frozen=True)
class _Selection:
    """`enable_fourierft`'s selection arguments, checked."""

    names: frozenset
    paths: tuple
    blocks: frozenset | None
    n_pattern: tuple
    bias: str
    keep_names: frozenset
    keep_paths: tuple


_SELECTION_ARGS = (
    "target_layer_names",
    "target_paths",
    "blocks",
    "n_frequency_pattern",
    "bias",
    "trainable_layers",
)


def enable_fourierft(target, config=None, **overrides):
    """Adds FourierFT adapters, in place, to a built model or layer.

    `target` is a built Keras/KerasHub model, or a single built
    `keras.layers.Dense`/`keras.layers.EinsumDense` layer: the layer object
    stays the same (its class becomes `FourierDense`/`FourierEinsumDense`),
    keeps its name, variables and place in every model; its kernel and bias
    are frozen and a trainable `coefficients` variable is added.

    For a model, the targets are the `Dense`/`EinsumDense` layers whose
    `layer.name` is in `target_layer_names`, or whose path (see
    `fourierft_layers`) matches one of the regular expressions
    `target_paths`. By default they are the layers a KerasHub backbone names
    in `default_lora_layer_names()` (its query and value projections), or,
    for other models, layers named `query`, `value`, `query_dense` or
    `value_dense`. Every argument is checked before anything changes: on an
    error the model is left untouched.

    Freezing rule (models): afterwards the only trainable variables are the
    coefficients, plus the weights outside the backbone of a KerasHub task
    model (its head), the weights of layers named in `trainable_layers`, and
    biases by `bias`: `"none"` (PEFT's default), `"fourier_only"` (the
    adapted layers' biases) or `"all"` (every variable named `bias`).
    Quantized kernels and their scales stay as Keras sets them. Compile the
    model after enabling. Distribution: see `docs/distributed.md`.

    Args:
        target: A built Keras model, or a built `Dense`/`EinsumDense` layer.
        config: Optional `FourierFTConfig` (defaults: `FourierFTConfig()`).
        **overrides: `FourierFTConfig` fields replacing those of `config`
            (e.g. `n_frequency=1000`), and, for models only, the selection
            arguments `target_layer_names` (list of names),
            `target_paths` (list of regular expressions), `blocks` (list of
            transformer block indices: a path component ending in
            `layer_<i>` or `block_<i>`), `n_frequency_pattern` (dict
            `{regex: n}`, the first match wins, PEFT's), `bias` and
            `trainable_layers` (names or path regexes); `verbose=True`
            prints the summary.

    Returns:
        A `FourierFTSummary`.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    print(keras_fourierft.enable_fourierft(backbone, n_frequency=1000))
    dense = keras.layers.Dense(64)
    dense.build((None, 32))
    keras_fourierft.enable_fourierft(dense, n_frequency=200)
    ```
    """
    verbose = overrides.pop("verbose", False)
    selection = {k: overrides.pop(k) for k in _SELECTION_ARGS if k in overrides}
    config = _make_config(config, overrides)
    if isinstance(target, _LINEAR):
        if selection:
            raise ValueError(
                f"{sorted(selection)} select layers inside a model; "
                f"`target` is the single layer {target.name!r}. Pass the "
                "model instead, or leave them out."
            )
        _check_layer(target, target.name, config)
        adapt_in_place(target, config)
        summary = _summarize(target, {target: target.name})
    else:
        _check_model(target)
        checked = _check_selection(target, **selection)
        summary = _adapt_model(target, _plan(target, config, checked), checked)
    if verbose:
        print(summary)
    return summary


def _make_config(config, overrides):
    if config is None:
        config = FourierFTConfig()
    elif not isinstance(config, FourierFTConfig):
        raise TypeError(
            "`config` must be a `keras_fourierft.FourierFTConfig` or None. "
            f"Received: config={config!r}"
        )
    try:
        return config.replace(**overrides)
    except TypeError as error:
        raise TypeError(
            f"enable_fourierft: {error}. It takes `FourierFTConfig` fields "
            f"and {list(_SELECTION_ARGS) + ['verbose']}."
        ) from None


def _check_model(model):
    if not isinstance(model, keras.layers.Layer) or not (
        isinstance(model, keras.Model) or keras_internals.child_layers(model)
    ):
        raise TypeError(
            "enable_fourierft expects a Keras model or a Dense/EinsumDense "
            f"layer. Received: {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built. Build it (call it on data, or "
            "load it with `from_preset`) before enabling FourierFT."
        )
    existing = fourierft_layers(model)
    if existing:
        raise ValueError(
            f"FourierFT is already enabled on model {model.name!r} "
            f"({len(existing)} adapted layers, e.g. {next(iter(existing))!r}). "
            "Enable it once; to change the adapters, call "
            "`unload_fourierft(model, merge=False)` first."
        )
    distribution.check_placement(model.weights, f"model {model.name!r}")


def _check_layer(layer, path, config):
    try:
        check_adaptable(layer, config)
    except (TypeError, ValueError) as error:
        raise type(error)(f"Cannot adapt {path!r}: {error}") from None


def _check_selection(
    model,
    target_layer_names=None,
    target_paths=None,
    blocks=None,
    n_frequency_pattern=None,
    bias="none",
    trainable_layers=None,
):
    if bias not in _BIAS_MODES:
        raise ValueError(f"`bias` must be one of {_BIAS_MODES}. Received: {bias!r}")
    names = _as_names("target_layer_names", target_layer_names)
    paths = _as_names("target_paths", target_paths)
    if names is None and paths is None:
        names = _default_target_layer_names(model)
    keep = _as_names("trainable_layers", trainable_layers) or []
    return _Selection(
        names=frozenset(names or ()),
        paths=_compile("target_paths", paths or ()),
        blocks=_as_blocks(blocks),
        n_pattern=_as_n_pattern(n_frequency_pattern),
        bias=bias,
        keep_names=frozenset(keep),
        keep_paths=_compile("trainable_layers", keep),
    )


def _as_names(argument, value):
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        names = list(value)
    except TypeError:
        names = None
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError(f"`{argument}` must be a list of strings. Received: {value!r}")
    return names


def _compile(argument, patterns):
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(
                f"`{argument}` holds {pattern!r}, which is not a valid regular "
                f"expression ({error}). Escape it with `re.escape` to match "
                "it literally."
            ) from None
    return tuple(compiled)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_blocks(blocks):
    if blocks is None:
        return None
    try:
        values = list(blocks)
    except TypeError:
        values = None
    if values is None or not all(_is_int(v) and v >= 0 for v in values):
        raise TypeError(
            "`blocks` must be a list of block indices (integers >= 0), e.g. "
            f"`blocks=[0]`. Received: blocks={blocks!r}"
        )
    return frozenset(int(v) for v in values)


def _as_n_pattern(pattern):
    if pattern is None:
        return ()
    if not isinstance(pattern, dict):
        raise TypeError(
            "`n_frequency_pattern` must be a dict `{path regex: n_frequency}`. "
            f"Received: {type(pattern).__name__} {pattern!r}"
        )
    for key, value in pattern.items():
        if not isinstance(key, str) or not _is_int(value) or value < 1:
            raise ValueError(
                "`n_frequency_pattern` maps path regexes (strings) to positive "
                f"integers. Received: {key!r}: {value!r}"
            )
    regexes = _compile("n_frequency_pattern", list(pattern))
    return tuple(zip(regexes, map(int, pattern.values()), strict=True))


def _default_target_layer_names(model):
    """The layer names targeted when none are given (see `enable_fourierft`)."""
    for candidate in (model, getattr(model, "backbone", None)):
        method = getattr(candidate, "default_lora_layer_names", None)
        if callable(method):
            names = list(method())
            if names:
                return names
    return list(_DEFAULT_TARGETS)


def _plan(model, config, selection):
    """`{layer: (path, config)}` for every target, each checked."""
    walk = _walk_layers(model)
    plans = {}
    for path, layer in walk:
        if not _selected(path, layer, selection):
            continue
        if not isinstance(layer, _LINEAR):
            raise TypeError(
                f"Target layer {path!r} is a {type(layer).__name__}; FourierFT "
                "adapts Dense and EinsumDense layers only. Narrow "
                "`target_layer_names`/`target_paths`."
            )
        n = next((n for p, n in selection.n_pattern if p.search(path)), None)
        try:
            layer_config = config if n is None else config.replace(n_frequency=n)
        except ValueError as error:
            raise ValueError(f"Layer {path!r}: {error}") from None
        _check_layer(layer, path, layer_config)
        plans[layer] = (path, layer_config)
    if not plans:
        candidates = [path for path, layer in walk if isinstance(layer, _LINEAR)]
        shown = ", ".join(candidates[:30]) or "none"
        raise ValueError(
            f"No layer matched target_layer_names={sorted(selection.names)}, "
            f"target_paths={[p.pattern for p in selection.paths]}, "
            f"blocks={sorted(selection.blocks or []) or None}. Dense/EinsumDense "
            f"layers of this model: {shown}" + (" ..." if len(candidates) > 30 else "")
        )
    return plans


def _selected(path, layer, selection):
    if layer.name not in selection.names and not any(
        p.search(path) for p in selection.paths
    ):
        return False
    return selection.blocks is None or _block_index(path) in selection.blocks


def _block_index(path):
    for part in path.split("/"):
        match = _BLOCK_PATTERN.search(part)
        if match:
            return int(match.group(1))
    return None


def _adapt_model(model, plans, selection):
    """Adapts the planned (checked) layers, freezes, returns the summary."""
    for layer, (_, layer_config) in plans.items():
        adapt_in_place(layer, layer_config)
    _freeze(model, selection)
    _straight_through_logits(model)
    _mark_rebuilt_ancestors(model)
    _reset_compiled_functions(model)
    return _summarize(model, {layer: path for layer, (path, _) in plans.items()})


# The key an adapted model's config carries where Keras's own loader would
# rebuild adapted layers plain (see `_mark_rebuilt_ancestors`).
LOAD_MARK = "load_with_keras_fourierft_load_model"


def _mark_rebuilt_ancestors(model):
    """Makes `keras.saving.load_model` refuse what it would load without adapters.

    Sequential and Functional models list their layers in their config, so
    Keras's loader restores an adapted layer they hold directly. Any other
    layer or model (KerasHub backbones and tasks, `MultiHeadAttention`,
    subclassed models) rebuilds its sublayers plain from its own arguments:
    every such ancestor of an adapted layer gets its config nested under one
    key its class does not accept, so Keras's loader (and `clone_model`)
    stop with an error naming `keras_fourierft.load_model`, which removes
    the key, instead of silently loading the base model. Unloading every
    adapter removes it.
    """
    adapted = {id(layer) for _, layer in fourierft_layers(model).items()}
    for layer in _rebuilt_ancestors(model, adapted):
        if "get_config" not in vars(layer):
            layer.get_config = types.MethodType(_marked_get_config, layer)


def _unmark(model):
    for layer in [model] + [layer for _, layer in _walk_layers(model)]:
        if (
            vars(layer).get("get_config") is not None
            and getattr(vars(layer)["get_config"], "__func__", None)
            is _marked_get_config
        ):
            del layer.get_config


def _marked_get_config(layer):
    # Nested under one key, the arguments reach no constructor as they are.
    return {LOAD_MARK: type(layer).get_config(layer)}


def _rebuilt_ancestors(model, adapted):
    found = []

    def visit(layer, ancestors):
        if id(layer) in adapted:
            found.extend(
                a for a in ancestors if not keras_internals.lists_its_layers(a)
            )
            return
        for child in keras_internals.child_layers(layer):
            visit(child, ancestors + [layer])

    visit(model, [])
    return list({id(layer): layer for layer in found}.values())


def _straight_through_logits(model):
    # Keras's int8 reversible embedding (a causal LM's output projection)
    # gives its logits no input gradient; see keras_internals.
    for _, layer in _walk_layers(model):
        if isinstance(layer, keras.layers.ReversibleEmbedding):
            keras_internals.give_logits_an_input_gradient(layer)


def _enable_on_paths(model, configs, source="The adapters"):
    """Adapts exactly the layers at the given paths, each with its config.

    Used to rebuild the adapters a file describes; new coefficients start
    at zero.

    Args:
        model: A built Keras model without adapters.
        configs: Dict `{layer path: FourierFTConfig}` (paths as
            `fourierft_layers` gives them).
        source: How an error message names where the configs came from.

    Returns:
        A `FourierFTSummary`.
    """
    _check_model(model)
    layers = dict(_walk_layers(model))
    missing = sorted(set(configs) - set(layers))
    if missing:
        raise ValueError(
            f"{source} name layers this model does not have: {missing[:5]}. "
            f"Its layers: {', '.join(list(layers)[:30])}"
        )
    return _adapt_layers(model, {layers[path]: c for path, c in configs.items()})


def _adapt_layers(model, configs):
    """Adapts the not yet adapted layers of `{layer: config}` (zero init),
    then applies the default freezing rule to the whole model.

    Returns:
        A `FourierFTSummary` of the layers adapted here.
    """
    paths = {id(layer): path for path, layer in _walk_layers(model)}
    plans = {}
    for layer, config in configs.items():
        if not is_adapted(layer):
            path = paths.get(id(layer), layer.name)
            config = config.replace(coefficient_initializer="zeros")
            _check_layer(layer, path, config)
            plans[layer] = (path, config)
    return _adapt_model(model, plans, _check_selection(model, target_paths=[]))


def fourierft_layers(model):
    """Returns the FourierFT-adapted layers of a model, by path.

    A path joins layer names from the model down with `/`. It is stable and
    unique: names are kept as given, except that sibling names Keras
    generated (`dense_3`, `dense_4`, ...) are renumbered in order among
    their siblings (`dense`, `dense_1`, ...) when they are not already
    numbered so, so two fresh copies of a model give the same paths.

    Args:
        model: A Keras model or layer.

    Returns:
        A dict `{path: layer}` of `FourierDense`/`FourierEinsumDense`
        layers, in a stable (depth-first) order.

    Example:

    >>> for path, layer in keras_fourierft.fourierft_layers(backbone).items():
    ...     print(path, layer.n_frequency)
    """
    return {path: layer for path, layer in _walk_layers(model) if is_adapted(layer)}


def _walk_layers(model):
    """`(path, layer)` for every sublayer of a model, depth first, once each."""
    entries, seen = [], set()

    def visit(layer, prefix):
        children = []
        for child in keras_internals.child_layers(layer):
            if id(child) not in seen:
                seen.add(id(child))
                children.append(child)
        for name, child in zip(_sibling_names(children), children, strict=True):
            entries.append((prefix + name, child))
            visit(child, prefix + name + "/")

    visit(model, "")
    return entries


def _sibling_names(children):
    """Layer names, with generated-looking ones numbered in sibling order.

    Names matching a class's default name (`dense`, `dense_<i>`) are kept
    when, per default name, they already are `dense`, `dense_1`, ... in some
    order; otherwise (e.g. `dense_2`, `dense_3` in a second copy of a model)
    they are renumbered in sibling order.
    """
    groups = {}
    for child in children:
        default = _to_snake_case(type(child).__name__)
        if re.fullmatch(re.escape(default) + r"(_\d+)?", child.name):
            groups.setdefault(default, []).append(child.name)
    renumber = {
        default
        for default, names in groups.items()
        if set(names) != {_numbered(default, i) for i in range(len(names))}
    }
    names, used = [], {}
    for child in children:
        default = _to_snake_case(type(child).__name__)
        base = (
            default if default in renumber and child.name in groups[default] else None
        )
        if base is None:
            names.append(child.name)
            continue
        count = used.get(base, 0)
        used[base] = count + 1
        names.append(_numbered(base, count))
    return names


def _numbered(name, index):
    return name if index == 0 else f"{name}_{index}"


def _to_snake_case(name):
    # As Keras names layers by default (keras.src.utils.naming).
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _adapted(target):
    """`[(path, layer)]` of a model's adapted layers, or of an adapted layer."""
    if is_adapted(target):
        return [(target.name, target)]
    layers = (
        list(fourierft_layers(target).items())
        if isinstance(target, keras.layers.Layer)
        else []
    )
    if not layers:
        raise ValueError(
            f"{getattr(target, 'name', target)!r} has no FourierFT adapters. "
            "Call `keras_fourierft.enable_fourierft(target, ...)` first."
        )
    return layers


def set_fourierft_enabled(target, enabled):
    """Turns the FourierFT adapters of a model (or one layer) on or off.

    Off, every adapted layer computes exactly its frozen base layer. Merged
    adapters refuse to turn off (nothing changes): unmerge first.

    Args:
        target: An adapted model or layer.
        enabled: Boolean.

    Example:

    >>> keras_fourierft.set_fourierft_enabled(model, False)  # the base model
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be True or False. Received: {enabled!r}")
    layers = _adapted(target)
    merged = [path for path, layer in layers if layer.merged]
    if merged and not enabled:
        raise ValueError(
            f"The adapters of {target.name!r} are merged into the kernels "
            f"(e.g. {merged[0]!r}), so they cannot be turned off. Call "
            "`unmerge_fourierft(target)` first."
        )
    for _, layer in layers:
        layer.adapter_enabled = enabled


def merge_fourierft(target, safe_merge=True):
    """Folds every adapter's delta_W into its kernel (zero-overhead inference).

    While merged, the coefficients do not train and the adapters cannot be
    turned off; `unmerge_fourierft` restores the original kernels exactly.
    Quantized layers refuse (they run unmerged). All layers merge, or none.

    Args:
        target: An adapted model or layer.
        safe_merge: If True (default), check for NaN/Inf before merging.

    Example:

    >>> keras_fourierft.merge_fourierft(model)
    """
    _refuse_in_jax_fit(target, "merge")
    layers = _adapted(target)
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


def _refuse_in_jax_fit(target, verb):
    if keras_internals.fitting_on_jax(target):
        raise ValueError(
            f"Cannot {verb} the adapters of {target.name!r} during `fit` on JAX: "
            "merging changes which variables train, and Keras's JAX trainer "
            "keeps the optimizer of the variables the fit began with. "
            f"{verb.capitalize()} before or after `fit`; "
            "`set_fourierft_enabled` works between batches."
        )


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


def unmerge_fourierft(target):
    """Restores every adapted kernel exactly after `merge_fourierft`.

    Args:
        target: An adapted model or layer.

    Example:

    >>> keras_fourierft.unmerge_fourierft(model)
    """
    _refuse_in_jax_fit(target, "unmerge")
    for path, layer in _adapted(target):
        if layer.merged:
            try:
                layer.unmerge()
            except ValueError as error:
                raise ValueError(f"Layer {path!r}: {error}") from None


def unload_fourierft(target, merge=True):
    """Turns adapted layers back into plain `Dense`/`EinsumDense`, in place.

    With `merge=True` the plain layers hold `W + delta_W` (a turned-off
    adapter leaves `W`), so the model needs nothing from this package (save
    it with `model.save()` or KerasHub's `save_to_preset()`). With
    `merge=False` the original weights come back. Trainability of the other
    weights is left as it is.

    Args:
        target: An adapted model or layer.
        merge: Boolean, whether to keep the adapters' effect.

    Returns:
        The same target.

    Example:

    >>> model = keras_fourierft.unload_fourierft(model)
    """
    layers = _adapted(target)
    if merge:
        for path, layer in layers:
            if layer.quantization_mode is not None:
                raise ValueError(
                    f"Layer {path!r} is quantized; unload with merge=False or "
                    "from the float model."
                )
    for _, layer in layers:  # A bank goes with the adapters.
        layer._drop_bank()
    if merge:
        _merge_all([layer for _, layer in layers if layer.adapter_enabled], True)
    for _, layer in layers:
        remove_in_place(layer, merge=merge)
    if not fourierft_layers(target):
        _unmark(target)
    _reset_compiled_functions(target)
    return target


def _reset_compiled_functions(model):
    """Drops a model's compiled functions (KerasHub's `generate` included).

    Needed when layers change class (adapting, unloading): a traced function
    holds the old call. On/off and merge state need no reset, the layers
    read it at run time. The models inside the target (a task model's
    backbone) compiled their own functions with the same layers.
    """
    inner = [
        layer for _, layer in _walk_layers(model) if isinstance(layer, keras.Model)
    ]
    for owner in [model] + inner:
        for name in (
            "train_function",
            "test_function",
            "predict_function",
            "generate_function",
        ):
            if getattr(owner, name, None) is not None:
                setattr(owner, name, None)


def _owned_variables(model):
    """`(path, variable)` for every variable, `path` = `<layer path>/<name>`."""
    result = []
    for path, layer in [("", model)] + _walk_layers(model):
        children = keras_internals.child_layers(layer)
        inside = {id(v) for child in children for v in child.weights}
        for variable in layer.weights:
            if id(variable) not in inside:
                result.append((f"{path}/{variable.name}".lstrip("/"), variable))
    return result


def _freeze(model, selection):
    keep = set()
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, keras.layers.Layer):
        inside = {id(v) for v in backbone.weights}
        preprocessor = getattr(model, "preprocessor", None)
        if isinstance(preprocessor, keras.layers.Layer):
            inside |= {id(v) for v in preprocessor.weights}
        keep |= {id(v) for v in model.weights if id(v) not in inside}
    for path, layer in _walk_layers(model):
        if layer.name in selection.keep_names or any(
            p.search(path) for p in selection.keep_paths
        ):
            keep |= {id(v) for v in layer.weights}
    adapted = list(fourierft_layers(model).values())
    keep |= {id(layer.coefficients) for layer in adapted}
    if selection.bias == "fourier_only":
        keep |= {id(layer.bias) for layer in adapted if layer.bias is not None}
    if selection.bias == "all":
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
    layers = [model] + [layer for _, layer in _walk_layers(model)]
    flags = [layer.trainable for layer in layers]
    # Off first: on TensorFlow, assigning an unchanged flag does nothing.
    model.trainable = False
    model.trainable = True
    for layer, flag in zip(layers, flags, strict=True):
        if not any(id(v) in keep for v in layer.weights):
            layer.trainable = flag


def _summarize(target, paths):
    layers = [
        AdaptedLayer(
            path,
            layer._view["in_features"],
            layer._view["out_features"],
            layer.n_frequency,
        )
        for layer, path in paths.items()
    ]
    coefficients = sum(layer.n_frequency for layer in layers)
    # Parameters are numbers weights hold: the boolean on/off gates of the
    # adapted layers are state, not parameters.
    weights = [v for v in target.weights if v.dtype != "bool"]
    trainable = sum(_size(v) for v in weights if v.trainable)
    total = sum(_size(v) for v in weights)
    return FourierFTSummary(layers, coefficients, trainable - coefficients, total)


def _size(variable):
    return math.prod(variable.shape)


# Package-internal names under which adapters.py and peft.py reach the walk.
def walk_layers(model):
    """`(path, layer)` for every sublayer of a model (package-internal)."""
    return _walk_layers(model)


def fourier_layers(model):
    """`(path, layer)` for every adapted layer of a model (package-internal)."""
    return list(fourierft_layers(model).items())


enable_fourierft_on_paths = _enable_on_paths
owned_variables = _owned_variables
