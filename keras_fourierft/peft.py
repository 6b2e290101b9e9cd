"""Hugging Face PEFT FourierFT adapters: load them into Keras models, and back.

A PEFT adapter folder holds one `fourierft_spectrum` per torch module; the
locations come from `random_loc_seed`, drawn here exactly as in PEFT, so an
adapter moves between the two by renaming modules: by the table of the
model's family (`peft_names`: BERT/RoBERTa, Llama/Mistral/Qwen2, Gemma, GPT-2)
or by a `layer_map`.
"""

import os
import re

from keras_fourierft import peft_names
from keras_fourierft import reading
from keras_fourierft.adapters import _apply_adapter
from keras_fourierft.adapters import _host_spectrum
from keras_fourierft.adapters import _layers_to_save
from keras_fourierft.adapters import _weight_shape
from keras_fourierft.config import check_finite
from keras_fourierft.config import check_integer
from keras_fourierft.config import check_positive_integer
from keras_fourierft.distribution import is_writing_process
from keras_fourierft.files import PEFT_CONFIG_NAME
from keras_fourierft.files import PEFT_WEIGHTS_NAME
from keras_fourierft.files import check_peft_pair
from keras_fourierft.files import write_peft_folder
from keras_fourierft.peft_names import BERT_LAYER_MAP  # noqa: F401
from keras_fourierft.surgery import walk_layers

FILE_NAMES = (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME)
_KEY_PREFIX = "base_model.model."
_KEY_SUFFIX = ".fourierft_spectrum"


def load_peft_adapter(model, path, layer_map=None, spectra_only=False):
    """Loads a Hugging Face PEFT FourierFT adapter into a Keras model.

    The adapter's modules are mapped to the model's layers: transformers'
    names to KerasHub's for the family of the model's backbone (BERT and
    RoBERTa; Llama, Mistral and Qwen2; Gemma; GPT-2, whose fused `c_attn`
    is refused: its spectrum spans query, key and value at once), or by
    `layer_map`. Everything is checked before any
    weight changes (the files, one `Dense`/`EinsumDense` layer per module,
    each module's `n_frequency`, an adapted model's layers and settings); on
    a mismatch a `ValueError` says what differs and the model is left as it
    was. A model without adapters is enabled with the adapter's settings.
    The result computes what PEFT computes.

    Args:
        model: A Keras model with the architecture the adapter was trained
            on, its pretrained weights loaded.
        path: The adapter folder (as written by PEFT's `save_pretrained`).
        layer_map: Optional dict from PEFT module path (e.g.
            `"encoder.layer.0.attention.self.query"`) to the model's layer
            path (`/`-joined layer names; the end of a path is enough, e.g.
            `"transformer_layer_0/self_attention/query"`); `None` uses the
            model family's names. The same dict serves `save_peft_adapter`.
        spectra_only: If True, load only the FourierFT spectra of an adapter
            that also stores other weights (trained biases or
            `modules_to_save`, such as a task head), which cannot be mapped
            to Keras layers; by default such an adapter is refused.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    keras_fourierft.load_peft_adapter(backbone, "my-peft-adapter/")
    ```
    """
    _apply_adapter(model, _peft_entries(model, path, layer_map, spectra_only))


def _peft_entries(model, path, layer_map=None, spectra_only=False):
    """A PEFT folder's spectra as checked adapter entries for `model`'s
    layers (dicts: `path`, the layer fields, `spectrum`); changes nothing."""
    adapter = read_peft_adapter(path)
    if (others := adapter["other_keys"]) and not spectra_only:
        raise ValueError(
            f"The PEFT adapter at {os.fspath(path)!r} also stores weights "
            f"other than FourierFT spectra ({', '.join(map(repr, others[:3]))}), "
            "e.g. trained biases or `modules_to_save`, which cannot be mapped "
            "to Keras layers. Pass `spectra_only=True` to load the spectra "
            "alone."
        )
    config = adapter["config"]
    layers = dict(walk_layers(model))
    family = _family(model, layers, layer_map)
    targets, unknown = {}, []
    for module, spectrum in adapter["spectra"].items():
        _check_not_fused(module, family, by_name=layer_map is None)
        if layer_map is not None:
            wanted = layer_map.get(module)
        else:
            wanted = peft_names.rename(module, family.layer_map, ".")
        if wanted is None:
            unknown.append(module)
            continue
        layer_path = _keras_path(module, wanted, layers, model)
        if layer_path in targets:
            raise ValueError(
                f"PEFT modules {targets[layer_path][0]!r} and {module!r} both "
                f"map to layer {layer_path!r}. Pass a `layer_map`."
            )
        targets[layer_path] = (module, spectrum)
    if unknown:
        raise ValueError(
            _unknown_modules(path, unknown, family, layer_map, model, layers)
        )
    entries = [
        _entry(layer_path, layers[layer_path], *targets[layer_path], config)
        for layer_path in layers
        if layer_path in targets
    ]
    return entries


def read_peft_adapter(path):
    """Reads and checks a PEFT FourierFT adapter folder without any model.

    The config, then every declared dtype, shape and size of the weights
    file are checked before any tensor is read. Only the spectra are read,
    as float32 (PEFT saves float16/bfloat16 under mixed precision).

    Args:
        path: The adapter folder.

    Returns:
        A dict with `config` (the parsed `adapter_config.json`), `spectra`
        (PEFT module path -> float32 array, with no `base_model.model.`
        prefix) and `other_keys` (stored tensors that are not spectra).

    Example:

    ```python
    adapter = read_peft_adapter("my-peft-adapter/")
    sorted(adapter["spectra"])  # the adapted modules
    ```
    """
    path = os.fspath(path)
    hint = " Pass the folder that PEFT's `save_pretrained` wrote (safetensors)."
    config_path, weights_path = (
        reading.existing_file(os.path.join(path, name), name, hint)
        for name in FILE_NAMES
    )
    config = _read_config(config_path)
    n_frequency = _n_frequency_rule(config, config_path)
    header = reading.safetensors_header(weights_path, weights_path)
    modules, other_keys = {}, []
    for key, (dtype, shape, _, _) in header["tensors"].items():
        if not key.endswith(_KEY_SUFFIX):
            other_keys.append(key)
            continue
        module = key[: -len(_KEY_SUFFIX)].removeprefix(_KEY_PREFIX)
        if len(module) > _MAX_MODULE:
            raise ValueError(
                f"{weights_path!r} stores a tensor for a module path of "
                f"{len(module)} characters ({module[:80]!r}...); module "
                f"paths have at most {_MAX_MODULE}."
            )
        if shape != (n_frequency(module),):
            raise ValueError(
                f"{weights_path!r} is inconsistent with its config: module "
                f"{module!r} stores a spectrum of shape {shape}, the config "
                f"gives n_frequency={n_frequency(module)}."
            )
        if dtype not in ("float16", "bfloat16", "float32", "float64"):
            raise ValueError(
                f"{weights_path!r} stores the spectrum of module {module!r} as "
                f"{dtype} values, not floating point."
            )
        modules[key] = module
    if not modules:
        raise ValueError(f"{weights_path!r} holds no FourierFT spectra.")
    check_peft_pair(path, config, header["metadata"])
    values = reading.read_tensors(weights_path, weights_path, header, modules)
    spectra = {}
    for key, value in values.items():
        where = f"{weights_path!r}: the spectrum of module {modules[key]!r}"
        spectra[modules[key]] = reading.finite(value.astype("float32"), where)
    return {"config": config, "spectra": spectra, "other_keys": sorted(other_keys)}


def save_peft_adapter(
    model, path, layer_map=None, module_prefix=None, base_model_name_or_path=None
):
    """Saves a model's FourierFT adapter as a Hugging Face PEFT adapter.

    Writes the folder `path` (created if needed) that PEFT's
    `PeftModel.from_pretrained` loads into the matching transformers model.
    Layer paths become module paths by the names of the model family (as
    for `load_peft_adapter`) or the inverse of `layer_map`, after
    `module_prefix`. Layers that transformers fuses into one module (GPT-2's
    query, key and value in `c_attn`) are refused. A failure leaves a
    previous adapter as it was, and a folder half-renamed by a crash is
    refused on load. Only spectra are stored (PEFT's `bias="none"`): layers
    that train their bias, or two layers with one module name (e.g. two
    backbones), are refused. With several JAX processes only process 0
    writes.

    Args:
        model: A model adapted with `enable_fourierft` (uniform sampling, one
            `scaling` and seed for all layers, as PEFT requires).
        path: The folder to write.
        layer_map: Optional dict from PEFT module path to layer path, as for
            `load_peft_adapter`.
        module_prefix: String put before every module path; `None` puts
            what transformers' causal LM of the family has (`"model."` for
            Llama, Mistral, Qwen2 and Gemma, `"transformer."` for GPT-2,
            nothing for BERT: pass `"bert."` for `BertFor...` task models),
            or nothing with a `layer_map`.
        base_model_name_or_path: Optional string recorded in the config.

    Example:

    ```python
    keras_fourierft.save_peft_adapter(backbone, "my-peft-adapter/")
    ```
    """
    layers = _layers_to_save(model)
    _check_exportable(layers)
    family = _family(model, dict(walk_layers(model)), layer_map)
    if module_prefix is None:
        module_prefix = family.module_prefix if layer_map is None else ""
    modules = [module_prefix + _module(p, layer_map, family) for p, _ in layers]
    owners = {}
    for (layer_path, _), module in zip(layers, modules, strict=True):
        if owners.setdefault(module, layer_path) != layer_path:
            raise ValueError(
                f"Layers {owners[module]!r} and {layer_path!r} both map to PEFT "
                f"module {module!r} (e.g. two backbones in one model); a PEFT "
                "adapter names each module once. Pass a `layer_map` that names "
                "them apart, or save each backbone on its own."
            )
    counts = [layer.n_frequency for _, layer in layers]
    default = max(set(counts), key=counts.count)
    first = layers[0][1]
    unset = ("task_type", "modules_to_save", "layers_to_transform")
    unset += ("layers_pattern", "exclude_modules", "revision")
    config = dict.fromkeys(unset) | {
        "peft_type": "FOURIERFT",
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "n_frequency": default,
        "scaling": float(first.scaling),
        "random_loc_seed": int(first.seed),
        "target_modules": modules,
        "n_frequency_pattern": {
            _pattern_key(module): n
            for module, n in zip(modules, counts, strict=True)
            if n != default
        },
        "init_weights": False,
        "bias": "none",
        "fan_in_fan_out": family.fan_in_fan_out,
    }
    if not is_writing_process():
        return
    tensors = {
        _KEY_PREFIX + module + _KEY_SUFFIX: _host_spectrum(layer)
        for module, (_, layer) in zip(modules, layers, strict=True)
    }
    write_peft_folder(path, config, tensors)


def _read_config(config_path):
    config = reading.read_json(config_path, config_path)
    if not isinstance(config, dict) or config.get("peft_type") != "FOURIERFT":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise ValueError(
            f"{config_path!r} is not a FourierFT adapter (peft_type={found!r}); "
            "only PEFT FourierFT adapters can be loaded."
        )
    for field in ("n_frequency", "scaling", "random_loc_seed"):
        if field not in config:
            raise ValueError(f"{config_path!r} lacks the field {field!r}.")
    pattern = config.get("n_frequency_pattern")
    if pattern is not None and not isinstance(pattern, dict):
        raise ValueError(
            f"{config_path!r} has n_frequency_pattern={pattern!r}, not a "
            "mapping from module name patterns to n_frequency."
        )
    try:
        check_positive_integer("n_frequency", config["n_frequency"])
        check_finite("scaling", config["scaling"])
        seed = check_integer("random_loc_seed", config["random_loc_seed"])
        for key, value in (pattern or {}).items():
            check_positive_integer(f"n_frequency_pattern[{key!r}]", value)
    except ValueError as error:
        raise ValueError(f"{config_path!r} has {error}.") from None
    if not -(2**63) <= seed < 2**64:
        raise ValueError(
            f"{config_path!r} has random_loc_seed={seed}, outside the range "
            "torch accepts ([-2**63, 2**64)). Save the adapter again with a "
            "seed in that range."
        )
    return config


# `n_frequency_pattern` keys and module names come from the folder, and PEFT
# matches the keys as regexes. A dotted name is compared as a suffix; any
# other key only if its matching work is bounded: no backreferences or
# repeated groups, at most `_MAX_REPEATS` repeats (each of one character) and
# `_MAX_ALTERNATIVES` combinations of alternatives, module names of at most
# `_MAX_MODULE` characters.
_LITERAL_KEY = re.compile(r"[\w-]+(?:\.[\w-]+)*")
_MAX_KEY = 256
_MAX_MODULE = 512
_MAX_REPEATS = 2
_MAX_ALTERNATIVES = 16
# A regex's atoms: escape, class, group start/end, `|`, quantifier, other.
_QUANTIFIER = r"(?:[*+?]|\{\d*,?\d*\})[?+]?"
_TOKEN = re.compile(rf"\\.|\[\^?\]?(?:\\.|[^\]])*\]|\(\??|\)|\||({_QUANTIFIER})|.")


def _n_frequency_rule(config, config_path):
    r"""PEFT's n: the first key `k` with `re.match(rf".*\.{k}$", module)`."""
    pattern = config.get("n_frequency_pattern") or {}
    matchers = [(_key_matcher(key, config_path), n) for key, n in pattern.items()]
    return lambda module: next(
        (n for matches, n in matchers if matches(module)),
        pattern.get(module, config["n_frequency"]),
    )


def _key_matcher(key, config_path):
    if _LITERAL_KEY.fullmatch(key):
        return lambda module: module.endswith("." + key)
    try:
        compiled = re.compile(rf".*\.{key}$")
        problem = _unbounded_work(key)
    except re.error as error:
        problem = f"it is not a regular expression ({error})"
    if len(key) > _MAX_KEY:
        problem = f"it is longer than {_MAX_KEY} characters"
    if problem:
        raise ValueError(
            f"{config_path!r}: n_frequency_pattern key {key[:80]!r} cannot be "
            f"matched safely: {problem}. Keys are module names (compared as "
            "the end of a module path) or simple regular expressions."
        )
    return lambda module: compiled.match(module) is not None


def _unbounded_work(key):
    """Why matching the (valid) regex `key` may not be bounded, or None."""
    if re.search(r"\\[1-9]|\(\?P=", key):
        return "it uses a backreference"
    atoms = list(_TOKEN.finditer(key))
    repeats = [i for i, atom in enumerate(atoms) if atom[1]]  # quantifiers
    if any(i and atoms[i - 1][0] == ")" for i in repeats):
        return "it repeats a group (e.g. `(a|b)+`)"
    if len(repeats) > _MAX_REPEATS:
        return f"it repeats more than {_MAX_REPEATS} characters (*, +, ?, {{}})"
    alternatives = [1]  # of each group open, the outermost first
    for atom in (atom[0] for atom in atoms):
        if atom == "|":
            alternatives[-1] += 1
        elif atom.startswith("("):
            alternatives.append(1)
        elif atom == ")":
            inner = alternatives.pop()
            alternatives[-1] *= inner
    if alternatives[0] > _MAX_ALTERNATIVES:
        return f"it has more than {_MAX_ALTERNATIVES} combinations of alternatives"
    return None


def _pattern_key(module):
    # PEFT matches keys with `.*\.{key}$`, so a key needs a dot before it.
    if "." not in module:
        raise ValueError(
            f"PEFT cannot give module {module!r} its own n_frequency (its "
            "`n_frequency_pattern` keys must follow a dot). Use the same "
            "n_frequency for all layers or pass a `module_prefix`."
        )
    return module.split(".", 1)[1]


def _entry(layer_path, layer, module, spectrum, config):
    in_features, out_features = _weight_shape(
        layer, f"Layer {layer_path!r} (for PEFT module {module!r})"
    )
    return dict(
        path=layer_path, in_features=in_features, out_features=out_features,
        n_frequency=int(spectrum.shape[0]), scaling=float(config["scaling"]),
        seed=int(config["random_loc_seed"]) % 2**32,  # as torch's generator
        sampling="uniform", center_frequency=None, bandwidth=None,
        spectrum=spectrum,
    )  # fmt: skip


def _family(model, layers, layer_map):
    try:
        return peft_names.family_of([model, *layers.values()])
    except ValueError:
        if layer_map is None:
            raise
        return peft_names.BERT


def _check_not_fused(module, family, by_name):
    reason = peft_names.fused_module_reason(module, family, by_name)
    if reason:
        raise ValueError(
            f"PEFT module {module!r} is {reason}. PEFT's FourierFT spectrum "
            "spans the fused matrix, and its delta_W is not a FourierFT adapter "
            "of each Keras layer, so it cannot be loaded as an adapter. Merge "
            "it in transformers (`merge_and_unload()`) and convert the merged "
            f"model, or train the adapter without {module.rsplit('.', 1)[-1]!r} "
            "in `target_modules`."
        )


def _unknown_modules(path, unknown, family, layer_map, model, layers):
    listed = ", ".join(map(repr, unknown[:3])) + (", ..." if unknown[3:] else "")
    if layer_map is not None:
        return (
            f"`layer_map` has no entry for PEFT module(s) {listed} of "
            f"{os.fspath(path)!r} ({len(unknown)} in all)."
        )
    known = ", ".join(source for source, _ in family.layer_map)
    read_as = _read_as(family, [model, *layers.values()])
    return (
        f"{len(unknown)} PEFT module(s) of {os.fspath(path)!r} have no known "
        f"counterpart in model {model.name!r} ({read_as}, "
        f"whose known modules end in {known}): {listed}. Pass `layer_map="
        "{peft_module_path: layer_path}` with layer paths as `/`-joined layer "
        "names, e.g. 'transformer_layer_0/self_attention/query'."
    )


def _read_as(family, layers):
    if family is peft_names.BERT and not peft_names.has_known_backbone(layers):
        return "no KerasHub backbone of a known family, so BERT names were tried"
    return f"read as a {family.name} model"


def _keras_path(module, wanted, layers, model):
    found = [p for p in layers if p == wanted or p.endswith("/" + wanted)]
    if len(found) != 1:
        what = "no layer" if not found else f"several layers ({found})"
        raise ValueError(
            f"PEFT module {module!r} maps to {wanted!r}, but model "
            f"{model.name!r} has {what} at that path."
        )
    return found[0]


def _module(layer_path, layer_map, family):
    """The PEFT module name (before any prefix) of an adapted layer."""
    if layer_map is not None:
        found = [
            module
            for module, wanted in layer_map.items()
            if layer_path == wanted or layer_path.endswith("/" + wanted)
        ]
        if len(found) != 1:
            what = "no entry" if not found else f"several entries ({found})"
            raise ValueError(f"`layer_map` has {what} for layer {layer_path!r}.")
        return found[0]
    fused = peft_names.fused_layer_module(layer_path, family)
    if fused is not None:
        raise ValueError(
            f"Layer {layer_path!r} is part of transformers' fused {fused!r} "
            f"module in {family.name} models. PEFT adapts {fused!r} with one "
            "FourierFT spectrum of the fused matrix, which separate adapters "
            "of its Keras layers cannot be written as. For a PEFT export, "
            "adapt the other projections only; `save_fourierft_weights` saves "
            "any adapter."
        )
    flipped = [(keras, peft) for peft, keras in family.layer_map]
    module = peft_names.rename(layer_path, flipped, "/")
    if module is None:
        raise ValueError(
            f"Layer {layer_path!r} has no known PEFT module name in "
            f"{family.name} models. Pass `layer_map={{peft_module_path: "
            "layer_path}`."
        )
    return module


def _check_exportable(layers):
    settings = {(float(layer.scaling), int(layer.seed)) for _, layer in layers}
    if len(settings) > 1:
        raise ValueError(
            "PEFT adapters have one `scaling` and one seed for all layers; "
            f"this model's adapters use {sorted(settings)}."
        )
    for layer_path, layer in layers:
        if layer.sampling != "uniform":
            raise ValueError(
                f"Layer {layer_path!r} uses sampling={layer.sampling!r}; PEFT "
                "only knows uniform locations. Save it with "
                "`save_fourierft_weights` instead."
            )
        if layer.bias is not None and layer.bias.trainable:
            raise ValueError(
                f"Layer {layer_path!r} trains its bias, which a PEFT FourierFT "
                "adapter file cannot hold. Save it with "
                "`save_fourierft_weights(..., include_trainable_weights=True)`."
            )
