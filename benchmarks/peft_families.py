"""PEFT interop per KerasHub LLM family, against real transformers + peft.

For each family (Llama, Mistral, Qwen2, Gemma, GPT-2) a tiny random
transformers causal LM is saved as a Hugging Face folder and loaded into
KerasHub (`Backbone.from_preset`). Both directions, with no `layer_map`:

- PEFT -> Keras: a FourierFT adapter made by peft (random spectra on every
  projection peft can adapt one by one) loads with `load_peft_adapter`;
- Keras -> PEFT: an adapter enabled in Keras (random coefficients) is
  written with `save_peft_adapter` and loaded by `PeftModel.from_pretrained`.

Reports the largest logit differences: `base_gap` (plain KerasHub vs
transformers), `effect` (what the adapter changes) and `gap` (adapted
KerasHub vs adapted transformers), per family and direction.

Usage:
    python benchmarks/peft_families.py [--backend jax] [--output f.json]
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import select_backend  # noqa: E402

select_backend(sys.argv)

import argparse  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fourierft  # noqa: E402

_SIZES = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2)
_HEADS = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
_LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
_LLAMA_MODULES += ["gate_proj", "up_proj", "down_proj"]


def _families():
    import transformers

    return {
        "llama": (transformers.LlamaConfig(**_SIZES, **_HEADS), _LLAMA_MODULES),
        "mistral": (
            transformers.MistralConfig(**_SIZES, **_HEADS, sliding_window=None),
            _LLAMA_MODULES,
        ),
        "qwen2": (transformers.Qwen2Config(**_SIZES, **_HEADS), _LLAMA_MODULES),
        "gemma": (
            transformers.GemmaConfig(**_SIZES, **_HEADS, head_dim=8),
            _LLAMA_MODULES,
        ),
        "gpt2": (
            transformers.GPT2Config(
                vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64
            ),
            ["c_proj", "c_fc"],  # not the fused `c_attn`
        ),
    }


FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2")
TOKENS = np.array([[5, 17, 3, 42, 8, 61, 29, 11]])


def transformers_model(family, folder):
    """A tiny random transformers causal LM of `family`, saved in `folder`."""
    import torch
    import transformers

    config, _ = _families()[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.float().eval()
    model.save_pretrained(folder)
    return model


def reload_transformers(folder):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32
    ).eval()


def torch_logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


def keras_logits(backbone):
    inputs = {"token_ids": TOKENS, "padding_mask": np.ones_like(TOKENS)}
    hidden = backbone(inputs)
    return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))


def keras_backbone(folder):
    import keras_hub

    return keras_hub.models.Backbone.from_preset(str(folder), dtype="float32")


def peft_adapter(model, family, folder, n_frequency=40, scaling=10.0):
    """A peft FourierFT adapter of `model` with random spectra, saved."""
    import peft
    import torch

    _, modules = _families()[family]
    config = peft.FourierFTConfig(
        n_frequency=n_frequency,
        scaling=scaling,
        random_loc_seed=7,
        target_modules=modules,
        init_weights=False,  # random spectra
    )
    torch.manual_seed(1)
    adapted = peft.get_peft_model(model, config)
    adapted.save_pretrained(folder)
    return adapted


_ATTENTION = ["query", "key", "value", "attention_output"]
_LLAMA_LAYERS = _ATTENTION + ["feedforward_gate_dense"]
_LLAMA_LAYERS += ["feedforward_intermediate_dense", "feedforward_output_dense"]
KERAS_LAYERS = {
    "llama": _LLAMA_LAYERS,
    "mistral": _LLAMA_LAYERS,
    "qwen2": _LLAMA_LAYERS,
    "gemma": _ATTENTION + ["ffw_gating", "ffw_gating_2", "ffw_linear"],
    # GPT-2's query, key and value are one fused module in transformers.
    "gpt2": _LLAMA_LAYERS[3:4] + _LLAMA_LAYERS[5:],
}


def keras_adapter(backbone, family, seed=3):
    """FourierFT with random coefficients on the family's exportable layers."""
    keras_fourierft.enable_fourierft(
        backbone,
        n_frequency=40,
        scaling=10.0,
        seed=seed,
        target_layer_names=KERAS_LAYERS[family],
    )
    rng = np.random.default_rng(seed)
    for layer in keras_fourierft.fourierft_layers(backbone).values():
        layer.set_spectrum(rng.normal(size=layer.n_frequency).astype("float32"))
    return backbone


def _largest(a, b):
    return float(np.abs(a - b).max())


def compare(family, root):
    """The logit gaps of `family` both ways, in the folder `root`."""
    import peft

    root = pathlib.Path(root)
    model = transformers_model(family, root / "model")
    base = torch_logits(model)
    backbone = keras_backbone(root / "model")
    base_gap = _largest(keras_logits(backbone), base)
    # PEFT -> Keras.
    adapted = torch_logits(peft_adapter(model, family, root / "peft"))
    keras_fourierft.load_peft_adapter(backbone, root / "peft")
    into_keras = _largest(keras_logits(backbone), adapted)
    effect_in = _largest(adapted, base)
    # Keras -> PEFT.
    backbone = keras_adapter(keras_backbone(root / "model"), family)
    ours = keras_logits(backbone)
    keras_fourierft.save_peft_adapter(backbone, root / "export")
    loaded = peft.PeftModel.from_pretrained(
        reload_transformers(root / "model"), str(root / "export")
    )
    into_peft = _largest(torch_logits(loaded.eval()), ours)
    return {
        "base_gap": base_gap,
        "peft_to_keras": {"effect": effect_in, "gap": into_keras},
        "keras_to_peft": {"effect": _largest(ours, base), "gap": into_peft},
        "exported_modules": len(loaded.peft_config["default"].target_modules),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend")
    parser.add_argument("--output")
    args = parser.parse_args()
    from common import report

    results = {}
    for family in FAMILIES:
        with tempfile.TemporaryDirectory() as root:
            results[family] = compare(family, root)
    report("peft_families", {"families": results}, args.output)


if __name__ == "__main__":
    main()
