"""transformers module names and the KerasHub layer paths they stand for.

A PEFT adapter names the torch modules it adapts (`model.layers.0.self_attn.
q_proj`); a Keras model has layer paths (`transformer_layer_0/self_attention/
query`). Each model family has its table of corresponding names; the family
of a model is that of the KerasHub backbone it holds.
"""

import collections
import re

# Pairs (PEFT module, KerasHub layer path); `{i}` is a block index and
# `{name:a|b}` one of the names listed, the same on both sides.
# fmt: off
BERT_LAYER_MAP = (
    ("encoder.layer.{i}.attention.self.{name:query|key|value}",
     "transformer_layer_{i}/self_attention_layer/{name:query|key|value}"),
    ("encoder.layer.{i}.attention.output.dense",
     "transformer_layer_{i}/self_attention_layer/attention_output"),
    ("encoder.layer.{i}.intermediate.dense",
     "transformer_layer_{i}/feedforward_intermediate_dense"),
    ("encoder.layer.{i}.output.dense",
     "transformer_layer_{i}/feedforward_output_dense"),
    ("pooler.dense", "pooled_dense"),
)
LLAMA_LAYER_MAP = (
    ("layers.{i}.self_attn.q_proj", "transformer_layer_{i}/self_attention/query"),
    ("layers.{i}.self_attn.k_proj", "transformer_layer_{i}/self_attention/key"),
    ("layers.{i}.self_attn.v_proj", "transformer_layer_{i}/self_attention/value"),
    ("layers.{i}.self_attn.o_proj",
     "transformer_layer_{i}/self_attention/attention_output"),
    ("layers.{i}.mlp.gate_proj", "transformer_layer_{i}/feedforward_gate_dense"),
    ("layers.{i}.mlp.up_proj",
     "transformer_layer_{i}/feedforward_intermediate_dense"),
    ("layers.{i}.mlp.down_proj", "transformer_layer_{i}/feedforward_output_dense"),
)
GEMMA_LAYER_MAP = (
    ("layers.{i}.self_attn.q_proj", "decoder_block_{i}/attention/query"),
    ("layers.{i}.self_attn.k_proj", "decoder_block_{i}/attention/key"),
    ("layers.{i}.self_attn.v_proj", "decoder_block_{i}/attention/value"),
    ("layers.{i}.self_attn.o_proj", "decoder_block_{i}/attention/attention_output"),
    ("layers.{i}.mlp.gate_proj", "decoder_block_{i}/ffw_gating"),
    ("layers.{i}.mlp.up_proj", "decoder_block_{i}/ffw_gating_2"),
    ("layers.{i}.mlp.down_proj", "decoder_block_{i}/ffw_linear"),
)
GPT2_LAYER_MAP = (
    ("h.{i}.attn.c_proj", "transformer_layer_{i}/self_attention/attention_output"),
    ("h.{i}.mlp.c_fc", "transformer_layer_{i}/feedforward_intermediate_dense"),
    ("h.{i}.mlp.c_proj", "transformer_layer_{i}/feedforward_output_dense"),
)
# GPT-2's `c_attn` is one Conv1D for query, key and value together.
GPT2_FUSED = (
    ("h.{i}.attn.c_attn",
     "transformer_layer_{i}/self_attention/{name:query|key|value}"),
)
# fmt: on

Family = collections.namedtuple(
    "Family", "name backbones module_prefix layer_map fused fan_in_fan_out"
)
Family.__doc__ = """A model family's names.

Attributes:
    name: The family's name.
    backbones: KerasHub backbone class names of the family.
    module_prefix: What transformers' causal LM / task model puts before
        the module names of `layer_map` (e.g. `"model."`).
    layer_map: (PEFT module, KerasHub layer path) pairs.
    fused: (PEFT module, KerasHub layer paths) pairs of fused projections:
        one torch module for several Keras layers.
    fan_in_fan_out: Whether the modules are transformers' `Conv1D`, whose
        weights are stored (in, out), as PEFT's config records.
"""

BERT = Family(
    "bert", ("BertBackbone", "RobertaBackbone"), "", BERT_LAYER_MAP, (), False
)
FAMILIES = (
    Family(
        "llama",
        ("LlamaBackbone", "MistralBackbone", "QwenBackbone"),
        "model.",
        LLAMA_LAYER_MAP,
        (),
        False,
    ),
    Family("gemma", ("GemmaBackbone",), "model.", GEMMA_LAYER_MAP, (), False),
    Family("gpt2", ("GPT2Backbone",), "transformer.", GPT2_LAYER_MAP, GPT2_FUSED, True),
    BERT,
)
# Last parts of transformers module names that fuse several projections
# (GPT-2, Phi-3, Falcon, Baichuan, MPT): a FourierFT spectrum over the fused
# matrix is not one adapter per Keras layer.
FUSED_MODULE_NAMES = ("c_attn", "qkv_proj", "gate_up_proj", "query_key_value")
FUSED_MODULE_NAMES += ("W_pack", "Wqkv")

_NUMBER = r"\d+"


def family_of(layers):
    """The family of the backbones among `layers`, `BERT` if none is known.

    Args:
        layers: The model and its sublayers.

    Returns:
        A `Family`.

    Raises:
        ValueError: The layers hold backbones of several families.
    """
    found = {}
    for layer in layers:
        names = {cls.__name__ for cls in type(layer).__mro__}
        for family in FAMILIES:
            if names.intersection(family.backbones):
                found.setdefault(family.name, family)
                break
    if len(found) > 1:
        raise ValueError(
            f"The model holds backbones of several families ({sorted(found)}); "
            "pass a `layer_map` that names each adapted layer."
        )
    return next(iter(found.values()), BERT)


def rename(path, table, separator):
    """`path` renamed by the first `table` pair whose source matches its end.

    Args:
        path: A PEFT module path (`separator` `"."`) or a layer path (`"/"`).
        table: (source, target) pairs, e.g. a family's `layer_map`.
        separator: What separates the parts of `path`.

    Returns:
        The target with the matched fields filled in, or None.
    """
    for source, target in table:
        match = _match_end(source, path, separator)
        if match:
            return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda f, m=match: m[f[1]], target)
    return None


def has_known_backbone(layers):
    """Whether one of `layers` is a backbone of a known family."""
    names = {name for family in FAMILIES for name in family.backbones}
    return any(
        names.intersection(cls.__name__ for cls in type(layer).__mro__)
        for layer in layers
    )


def fused_module_reason(module, family, by_name=True):
    """Why the PEFT module `module` fuses several layers, or None.

    A module matching the family's fused modules always; with `by_name`,
    also a module whose last name is a known fused projection's.
    """
    if any(_match_end(source, module, ".") for source, _ in family.fused):
        return (
            f"{family.name}'s fused query/key/value projection, which KerasHub "
            "splits into its `query`, `key` and `value` layers"
        )
    if by_name and module.rsplit(".", 1)[-1] in FUSED_MODULE_NAMES:
        return "a fused projection (several projections in one matrix)"
    return None


def fused_layer_module(layer_path, family):
    """The fused PEFT module the Keras layer `layer_path` is part of, or None."""
    flipped = [(keras, peft) for peft, keras in family.fused]
    return rename(layer_path, flipped, "/")


def _match_end(source, path, separator):
    pattern, position = rf"(?:.*{re.escape(separator)})?", 0
    for field in re.finditer(r"\{(\w+)(?::([^}]*))?\}", source):
        pattern += re.escape(source[position : field.start()])
        pattern += f"(?P<{field[1]}>{field[2] or _NUMBER})"
        position = field.end()
    return re.fullmatch(pattern + re.escape(source[position:]), path)
