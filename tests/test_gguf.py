"""`examples/smollm2.py`: SmolLM2's GGUF file as a Hugging Face folder that
KerasHub loads, checked against transformers' own GGUF loader; bad files."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write the number forty-two in digits.",
    "Name three colours of the rainbow.",
]


def _load_example_module():
    spec = importlib.util.spec_from_file_location(
        "smollm2", ROOT / "examples" / "smollm2.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("smollm2", module)
    spec.loader.exec_module(module)
    return module


smollm2 = _load_example_module()


def _llama_cpp_permute(weight, heads):
    """llama.cpp's `convert_hf_to_gguf.py` reordering of q/k rows."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


@pytest.mark.parametrize("heads, head_dim", [(9, 64), (3, 64), (2, 4)])
def test_unpermute_inverts_llama_cpps_permutation(heads, head_dim):
    weight = np.random.default_rng(0).normal(size=(heads * head_dim, 7))
    permuted = _llama_cpp_permute(weight, heads)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(smollm2.unpermute_rows(permuted, heads), weight)


# --- bad files: a clear error, nothing written ------------------------------


def _write_gguf(path, architecture, tensors=None, metadata=()):
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    for key, value in metadata:
        writer.add_uint32(key, value)
    for name, value in (tensors or {"token_embd.weight": np.zeros((4, 8))}).items():
        writer.add_tensor(name, np.asarray(value, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _assert_cache_untouched(cache, before):
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "other-model").mkdir()
    (cache / "other-model" / "config.json").write_text("{}")
    return cache


def test_another_architecture_is_refused(tmp_path, cache):
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    path = _write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(smollm2.GGUFConversionError, match="holds a 'gpt2' model"):
        smollm2.convert_cached(cache, gguf_path=path)
    _assert_cache_untouched(cache, before)


def test_llama_file_without_its_tensors_is_refused(tmp_path, cache):
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    path = _write_gguf(tmp_path / "llama.gguf", "llama")
    with pytest.raises(
        smollm2.GGUFConversionError, match="no 'llama.attention.head_count'"
    ):
        smollm2.convert_cached(cache, gguf_path=path)
    _assert_cache_untouched(cache, before)


def test_not_a_gguf_file_is_refused(tmp_path, cache):
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    path = tmp_path / "notes.gguf"
    path.write_text("just some text, not a model\n" * 10)
    with pytest.raises(smollm2.GGUFConversionError, match="not a readable GGUF"):
        smollm2.convert_cached(cache, gguf_path=path)
    _assert_cache_untouched(cache, before)


@pytest.mark.large
@pytest.mark.tensorflow_only  # backend-independent: once is enough
@pytest.mark.parametrize("keep", [64, 5_000_000, -1000])
def test_truncated_file_is_refused(tmp_path, cache, keep):
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    data = smollm2.find_gguf().read_bytes()
    path = tmp_path / smollm2.GGUF_NAME
    path.write_bytes(data[:keep])
    with pytest.raises(smollm2.GGUFConversionError, match=str(path)):
        smollm2.convert_cached(cache, gguf_path=path)
    _assert_cache_untouched(cache, before)


@pytest.mark.large
@pytest.mark.tensorflow_only  # backend-independent: once is enough
def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real_write = smollm2._write_folder

    def killed_while_writing(folder, model, gguf_path):
        real_write(folder, model, gguf_path)
        assert (folder / "model.safetensors").stat().st_size > 500_000_000
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_write_folder", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        smollm2.convert_cached(cache)
    assert list(cache.iterdir()) == []


def test_cache_of_another_file_is_not_reused(tmp_path):
    folder = tmp_path / "cache" / "model"
    folder.mkdir(parents=True)
    (folder / "gguf_source.json").write_text('{"gguf_file": "x.gguf", "bytes": 1}')
    source = tmp_path / "model.gguf"
    source.write_bytes(b"0" * 10)
    with pytest.raises(FileExistsError, match="was not converted from"):
        smollm2.convert_cached(tmp_path / "cache", gguf_path=source)
    assert sorted(p.name for p in folder.iterdir()) == ["gguf_source.json"]


# --- the real model against transformers' GGUF loader -----------------------


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF loading: its weights, token ids and logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = smollm2.find_gguf()
    kwargs = {"gguf_file": path.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=torch.float32, **kwargs
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    ids = [tokenizer(smollm2.chat_prompt(p))["input_ids"] for p in PROMPTS]
    with torch.no_grad():
        logits = [model(torch.tensor([i])).logits[0].numpy() for i in ids]
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return {"ids": ids, "logits": logits, "weights": weights}


def _keras_logits(folder, ids):
    import keras

    causal_lm = smollm2.load_causal_lm(folder)
    tokenizer = causal_lm.preprocessor.tokenizer
    keras_ids = [
        keras.ops.convert_to_numpy(tokenizer(smollm2.chat_prompt(p))).tolist()
        for p in PROMPTS
    ]
    backbone = causal_lm.backbone
    logits = []
    for token_ids in ids:
        inputs = {
            "token_ids": np.array([token_ids]),
            "padding_mask": np.ones((1, len(token_ids)), bool),
        }
        hidden = backbone(inputs)
        out = backbone.token_embedding(hidden, reverse=True)
        logits.append(keras.ops.convert_to_numpy(out)[0])
    return keras_ids, logits


def _gaps(logits, reference_logits):
    """Largest logit difference and the share of equal top-1 tokens."""
    both = list(zip(logits, reference_logits, strict=True))
    largest = max(float(np.abs(a - b).max()) for a, b in both)
    top1 = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in both])
    return largest, float(top1.mean())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return smollm2.convert_cached(tmp_path_factory.mktemp("models"))


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_weights_equal_transformers_gguf_loading(converted, reference):
    import safetensors.numpy

    ours = safetensors.numpy.load_file(str(converted / "model.safetensors"))
    theirs = reference["weights"]
    # transformers ties lm_head to the embedding; the folder says so.
    assert sorted(ours) == sorted(set(theirs) - {"lm_head.weight"})
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    np.testing.assert_array_equal(
        theirs["lm_head.weight"], ours["model.embed_tokens.weight"]
    )


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_keras_hub_logits_match_transformers(converted, reference):
    keras_ids, logits = _keras_logits(converted, reference["ids"])
    assert keras_ids == reference["ids"]
    largest, top1 = _gaps(logits, reference["logits"])
    peak = max(float(np.abs(r).max()) for r in reference["logits"])
    # float32 error: logits reach ~40, they agree to ~1e-4.
    assert largest < 1e-3 and peak > 10, (largest, peak)
    assert top1 == 1.0


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_without_the_unpermute_logits_are_wrong(tmp_path, monkeypatch, reference):
    monkeypatch.setattr(smollm2, "unpermute_rows", lambda weight, heads: weight)
    folder = smollm2.convert_cached(tmp_path)
    _, logits = _keras_logits(folder, reference["ids"])
    largest, top1 = _gaps(logits, reference["logits"])
    assert largest > 1.0 and top1 < 0.9, (largest, top1)


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_config_carries_the_files_settings(converted):
    import json

    config = json.loads((converted / "config.json").read_text())
    assert config["rms_norm_eps"] == 1e-5
    assert config["rope_theta"] == 100000.0
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    causal_lm = smollm2.load_causal_lm(converted)
    layer = causal_lm.backbone.get_layer("transformer_layer_0")
    assert layer.layer_norm_epsilon == pytest.approx(1e-5)


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_greedy_chat_answer(converted):
    causal_lm = smollm2.load_causal_lm(converted)
    answer = smollm2.chat(
        causal_lm, "What is the capital of France? Answer in one sentence."
    )
    assert answer == "The capital of France is Paris."


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_cached_folder_is_reused(converted):
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert smollm2.convert_cached(converted.parent) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_peft_adapter_from_transformers_loads_without_a_layer_map(converted, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import keras

    import keras_fourierft

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(converted), dtype=torch.float32
    ).eval()
    config = peft.FourierFTConfig(
        n_frequency=1000,
        scaling=150.0,
        random_loc_seed=11,
        target_modules=["q_proj", "v_proj"],
        init_weights=False,  # random spectra: an adapter that changes the logits
    )
    torch.manual_seed(0)
    ids = np.array([[1, 504, 3458, 282, 4649, 314, 2114, 47]])
    with torch.no_grad():
        base = model(torch.tensor(ids)).logits.numpy()
        adapted = peft.get_peft_model(model, config).eval()
        expected = adapted(torch.tensor(ids)).logits.numpy()
    adapted.save_pretrained(tmp_path)
    backbone = smollm2.load_causal_lm(converted).backbone
    keras_fourierft.load_peft_adapter(backbone, tmp_path)
    assert len(keras_fourierft.fourierft_layers(backbone)) == 60
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    logits = keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))
    gap, effect = np.abs(logits - expected).max(), np.abs(expected - base).max()
    # float32 error of 30 layers (as plain: ~1e-4), the adapter's effect far more.
    assert gap < 2e-3 and effect > 1.0, (gap, effect)
