"""PEFT module names per KerasHub model family, both directions.

The `large` tests check every family against real transformers + peft on
tiny random models (`benchmarks/peft_families.py`); the others check the
names and refusals on KerasHub models alone.
"""

import importlib.util
import json
import pathlib

import keras
import keras_hub
import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import testing

from keras_fourierft import enable_fourierft
from keras_fourierft import fourierft_layers
from keras_fourierft import load_peft_adapter
from keras_fourierft import save_peft_adapter
from tests import models
from tests.helpers import assert_same_weights
from tests.helpers import snapshot

_BENCHMARK = pathlib.Path(__file__).parents[1] / "benchmarks" / "peft_families.py"


def _families_module():
    spec = importlib.util.spec_from_file_location("peft_families", _BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _llama(num_layers=2):
    keras.utils.set_random_seed(0)
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=64,
        num_layers=num_layers,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )


def _gpt2():
    keras.utils.set_random_seed(0)
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )


def _gemma():
    keras.utils.set_random_seed(0)
    return keras_hub.models.GemmaBackbone(
        vocabulary_size=64,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=64,
        head_dim=8,
    )


def _tokens():
    ids = np.array([[3, 9, 1, 12, 7, 30]], "int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _adapted(model, names, seed=0):
    enable_fourierft(model, n_frequency=12, seed=seed, target_layer_names=names)
    rng = np.random.default_rng(seed)
    for layer in fourierft_layers(model).values():
        layer.set_spectrum(rng.normal(size=12).astype("float32"))
    return model


def _target_modules(folder):
    config = json.loads((pathlib.Path(folder) / "adapter_config.json").read_text())
    return sorted(config["target_modules"])


class FamilyNamesTest(testing.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("llama", _llama, ["query", "feedforward_gate_dense"],
         ["model.layers.{i}.self_attn.q_proj", "model.layers.{i}.mlp.gate_proj"]),
        ("gemma", _gemma, ["value", "ffw_gating_2", "ffw_linear"],
         ["model.layers.{i}.self_attn.v_proj", "model.layers.{i}.mlp.up_proj",
          "model.layers.{i}.mlp.down_proj"]),
        ("gpt2", _gpt2, ["attention_output", "feedforward_intermediate_dense"],
         ["transformer.h.{i}.attn.c_proj", "transformer.h.{i}.mlp.c_fc"]),
    )  # fmt: skip
    def test_export_names_transformers_modules(self, make, names, expected):
        model = _adapted(make(), names)
        folder = self.get_temp_dir()
        save_peft_adapter(model, folder)
        blocks = model.num_layers
        wanted = sorted(m.format(i=i) for m in expected for i in range(blocks))
        self.assertEqual(_target_modules(folder), wanted)
        fresh = make()
        load_peft_adapter(fresh, folder)
        self.assertAllClose(fresh(_tokens()), model(_tokens()), atol=1e-6)

    def test_causal_lm_exports_the_backbone_names(self):
        causal_lm = keras_hub.models.LlamaCausalLM(backbone=_llama(1))
        _adapted(causal_lm, ["value"])
        folder = self.get_temp_dir()
        save_peft_adapter(causal_lm, folder)
        self.assertEqual(_target_modules(folder), ["model.layers.0.self_attn.v_proj"])

    def test_one_layer_map_serves_both_directions(self):
        # Module names of a custom transformers port; layer paths by their end.
        layer_map = {
            f"decoder.blocks.{i}.{peft}": f"transformer_layer_{i}/{ours}"
            for i in range(2)
            for peft, ours in [
                ("attn.wq", "self_attention/query"),
                ("ffn.w1", "feedforward_intermediate_dense"),
            ]
        }
        names = ["query", "feedforward_intermediate_dense"]
        causal_lm = keras_hub.models.LlamaCausalLM(backbone=_llama())
        _adapted(causal_lm, names)
        folder = self.get_temp_dir()
        save_peft_adapter(causal_lm, folder, layer_map=layer_map)
        self.assertEqual(_target_modules(folder), sorted(layer_map))
        fresh = _llama()
        load_peft_adapter(fresh, folder, layer_map=layer_map)
        self.assertAllClose(fresh(_tokens()), causal_lm.backbone(_tokens()), atol=1e-6)

    def test_modules_of_another_family_are_refused_by_name(self):
        folder = self.get_temp_dir()
        save_peft_adapter(_adapted(_llama(1), ["query"]), folder)
        model = _gpt2()
        before = snapshot(model)
        with self.assertRaisesRegex(
            ValueError,
            r"1 PEFT module\(s\) .* no known counterpart .* gpt2 model.*"
            r"'model\.layers\.0\.self_attn\.q_proj'.*layer_map",
        ):
            load_peft_adapter(model, folder)
        assert_same_weights(before, snapshot(model))
        self.assertEqual(fourierft_layers(model), {})

    def test_gpt2_query_cannot_be_exported_as_part_of_c_attn(self):
        model = _adapted(_gpt2(), ["query", "attention_output"])
        folder = pathlib.Path(self.get_temp_dir()) / "adapter"
        with self.assertRaisesRegex(
            ValueError, r"'transformer_layer_0/self_attention/query'.*fused.*c_attn"
        ):
            save_peft_adapter(model, folder)
        self.assertFalse(folder.exists())

    def test_backbones_of_two_families_need_a_layer_map(self):
        llama, gemma = _llama(1), _gemma()
        inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in _tokens()}
        x = keras.layers.Add()([llama(inputs), gemma(inputs)])
        model = keras.Model(inputs, x)
        _adapted(llama, ["query"])
        with self.assertRaisesRegex(ValueError, "several families.*layer_map"):
            save_peft_adapter(model, self.get_temp_dir())


def _gpt2_c_attn_adapter(folder):
    import peft

    family = _families_module()
    model = family.transformers_model("gpt2", folder / "model")
    config = peft.FourierFTConfig(
        n_frequency=20, target_modules=["c_attn"], init_weights=False
    )
    peft.get_peft_model(model, config).save_pretrained(folder / "peft")
    return family.keras_backbone(folder / "model")


@pytest.mark.large
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gpt2"])
def test_family_matches_real_peft_both_ways(tmp_path, family):
    gaps = _families_module().compare(family, tmp_path)
    # Keras and transformers agree as closely adapted as plain (Mistral's
    # KerasHub converter casts to float16: ~1e-4 plain), while the adapter
    # changes the logits by far more.
    tolerance = 2 * gaps["base_gap"] + 1e-6
    for direction in ("peft_to_keras", "keras_to_peft"):
        assert gaps[direction]["gap"] < tolerance, (direction, gaps)
        assert gaps[direction]["effect"] > 1000 * gaps[direction]["gap"], gaps
    assert gaps["exported_modules"] == (6 if family == "gpt2" else 14)


@pytest.mark.large
def test_gpt2_fused_c_attn_adapter_is_refused(tmp_path):
    backbone = _gpt2_c_attn_adapter(tmp_path)
    before = snapshot(backbone)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn.*fused"):
        load_peft_adapter(backbone, tmp_path / "peft")
    # Also when a hand map sends it to `query`.
    layer_map = {
        f"transformer.h.{i}.attn.c_attn": f"transformer_layer_{i}/self_attention/query"
        for i in range(2)
    }
    with pytest.raises(ValueError, match="fused.*merge_and_unload"):
        load_peft_adapter(backbone, tmp_path / "peft", layer_map=layer_map)
    assert_same_weights(before, snapshot(backbone))
    assert fourierft_layers(backbone) == {}


def test_bert_names_are_unchanged(tmp_path):
    model = _adapted(models.bert_backbone(), ["query", "value"])
    save_peft_adapter(model, tmp_path)
    expected = [
        f"encoder.layer.{i}.attention.self.{name}"
        for i in range(2)
        for name in ("query", "value")
    ]
    assert _target_modules(tmp_path) == sorted(expected)


def test_a_mapped_fused_module_of_another_family_loads(tmp_path):
    # KerasHub's GPT-NeoX keeps `query_key_value` as one layer, so a hand map
    # of it is one adapter to one layer: the fused-name refusal is for
    # models without a map (and GPT-2's `c_attn`, which KerasHub splits).
    keras.utils.set_random_seed(0)
    make = lambda: keras_hub.models.GPTNeoXBackbone(  # noqa: E731
        vocabulary_size=64,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    model = _adapted(make(), ["query_key_value"])
    layer_map = {
        "gpt_neox.layers.0.attention.query_key_value": (
            "transformer_layer_0/self_attention/query_key_value"
        )
    }
    save_peft_adapter(model, tmp_path, layer_map=layer_map)
    keras.utils.set_random_seed(0)
    fresh = make()
    load_peft_adapter(fresh, tmp_path, layer_map=layer_map)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh(_tokens())),
        keras.ops.convert_to_numpy(model(_tokens())),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="fused projection"):
        load_peft_adapter(make(), tmp_path)
