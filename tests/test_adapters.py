import json
import os
import stat
import tracemalloc

import h5py
import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_fourierft import FourierEinsumDense
from keras_fourierft import enable_fourierft
from keras_fourierft import fourier_layers
from keras_fourierft import load_fourierft_weights
from keras_fourierft import save_fourierft_weights
from keras_fourierft.adapters import _read_adapter_file
from tests import models
from tests.helpers import assert_same_weights
from tests.helpers import kill
from tests.helpers import snapshot
from tests.helpers import start_child


def _trained_classifier(seed=1):
    model = models.bert_classifier(seed=0)
    enable_fourierft(model, n_frequency=20)
    rng = np.random.default_rng(seed)
    for _, layer in fourier_layers(model):
        layer.set_spectrum(rng.normal(size=20))
    head = model.get_layer("logits")
    head.kernel.assign(rng.normal(size=head.kernel.shape).astype("float32"))
    return model


def test_round_trip_into_fresh_model(tmp_path):
    model = _trained_classifier()
    x = models.bert_inputs()
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path, include_trainable_weights=True)
    fresh = models.bert_classifier(seed=0)
    enable_fourierft(fresh, n_frequency=20)
    assert not np.allclose(fresh.predict(x, verbose=0), expected, atol=1e-3)
    load_fourierft_weights(fresh, path)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, atol=1e-5)


def test_load_enables_a_plain_model(tmp_path):
    model = _trained_classifier()
    x = models.bert_inputs()
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path, include_trainable_weights=True)
    fresh = models.bert_classifier(seed=0)
    load_fourierft_weights(fresh, path)
    assert len(fourier_layers(fresh)) == 4
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, atol=1e-5)


def test_file_holds_only_coefficients(tmp_path):
    model = _trained_classifier()
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path)
    with h5py.File(path) as file:
        sizes = [file["fourierft"][k].size for k in file["fourierft"]]
        assert sizes == [20] * 4
        assert len(file["trainable"]) == 0
    assert os.path.getsize(path) < 20_000


def test_swap_adapters_without_recompiling(tmp_path):
    model = _trained_classifier(seed=1)
    x = models.bert_inputs()
    first = model.predict(x, verbose=0)
    path_a = str(tmp_path / "a.weights.h5")
    save_fourierft_weights(model, path_a)
    other = _trained_classifier(seed=2)
    path_b = str(tmp_path / "b.weights.h5")
    save_fourierft_weights(other, path_b)
    load_fourierft_weights(model, path_b)
    second = model.predict(x, verbose=0)
    assert not np.allclose(first, second, atol=1e-4)
    load_fourierft_weights(model, path_a)
    np.testing.assert_allclose(model.predict(x, verbose=0), first, atol=1e-6)


def test_merged_model_loads_and_stays_merged(tmp_path):
    from keras_fourierft import merge_fourierft

    source = _trained_classifier(seed=3)
    x = models.bert_inputs()
    path = str(tmp_path / "a.weights.h5")
    save_fourierft_weights(source, path)
    model = _trained_classifier(seed=4)
    merge_fourierft(model)
    load_fourierft_weights(model, path)
    assert all(layer.merged for _, layer in fourier_layers(model))
    source.get_layer("logits").set_weights(model.get_layer("logits").get_weights())
    np.testing.assert_allclose(
        model.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-4
    )


def _mismatch_cases(tmp_path):
    model = _trained_classifier()
    good = str(tmp_path / "good.weights.h5")
    save_fourierft_weights(model, good, include_trainable_weights=True)
    other_n = models.bert_classifier()
    enable_fourierft(other_n, n_frequency=10)
    path_n = str(tmp_path / "n.weights.h5")
    save_fourierft_weights(other_n, path_n)
    other_seed = models.bert_classifier()
    enable_fourierft(other_seed, n_frequency=20, seed=1)
    path_seed = str(tmp_path / "seed.weights.h5")
    save_fourierft_weights(other_seed, path_seed)
    other_targets = models.bert_classifier()
    enable_fourierft(other_targets, n_frequency=20, blocks=[0])
    path_targets = str(tmp_path / "targets.weights.h5")
    save_fourierft_weights(other_targets, path_targets)
    truncated = str(tmp_path / "truncated.weights.h5")
    with open(good, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    text = str(tmp_path / "text.weights.h5")
    with open(text, "w") as f:
        f.write("not hdf5")
    full = str(tmp_path / "full.weights.h5")
    model.save_weights(full)
    return {
        "n_frequency": path_n,
        "seed": path_seed,
        "adapted layers": path_targets,
        "truncated": truncated,
        "not an HDF5": text,
        "not a FourierFT adapter": full,
        "end in": str(tmp_path / "adapter.h5"),
        "No adapter file": str(tmp_path / "missing.weights.h5"),
    }


def test_mismatches_raise_and_leave_model_untouched(tmp_path):
    cases = _mismatch_cases(tmp_path)
    model = _trained_classifier(seed=7)
    before = snapshot(model)
    for message, path in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_fourierft_weights(model, path)
        assert_same_weights(before, snapshot(model))


def test_other_architecture_is_rejected_before_enabling(tmp_path):
    model = _trained_classifier()
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path)
    import keras_hub

    wide = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
    )
    other = keras_hub.models.BertTextClassifier(
        backbone=wide, num_classes=2, preprocessor=None
    )
    before = snapshot(other)
    with pytest.raises(ValueError, match="16x16"):
        load_fourierft_weights(other, path)
    assert not fourier_layers(other)
    assert_same_weights(before, snapshot(other))


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = _trained_classifier(seed=1)
    x = models.bert_inputs()
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path)
    changed = _trained_classifier(seed=9)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(FourierEinsumDense, "adapter_config", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_fourierft_weights(changed, path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["adapter.weights.h5"]
    fresh = models.bert_classifier(seed=0)
    enable_fourierft(fresh, n_frequency=20)
    fresh.get_layer("logits").set_weights(model.get_layer("logits").get_weights())
    load_fourierft_weights(fresh, path)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, atol=1e-5)


def test_save_without_adapters_fails():
    with pytest.raises(ValueError, match="no FourierFT adapters"):
        save_fourierft_weights(models.bert_classifier(), "x.weights.h5")


def test_spectrum_round_trips_through_lr_multiplier(tmp_path):
    model = models.bert_classifier()
    enable_fourierft(model, n_frequency=20, lr_multiplier=1.0)
    spectrum = np.linspace(-2, 2, 20).astype("float32")
    for _, layer in fourier_layers(model):
        layer.set_spectrum(spectrum)
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path)
    other = models.bert_classifier()
    enable_fourierft(other, n_frequency=20, lr_multiplier=100.0)
    load_fourierft_weights(other, path)
    for _, layer in fourier_layers(other):
        np.testing.assert_allclose(
            ops.convert_to_numpy(layer.spectrum), spectrum, rtol=1e-6
        )


def _three_class_classifier(seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertTextClassifier(
        backbone=models.bert_backbone(), num_classes=3, preprocessor=None
    )


def test_mismatched_extra_weights_raise_before_any_spectrum_changes(tmp_path):
    # The adapted layers match; only the stored head (2 classes) does not fit
    # the model's (3 classes). Nothing may be assigned, spectra included.
    keras.utils.set_random_seed(0)
    source = models.bert_classifier(seed=0)
    enable_fourierft(source, n_frequency=20)
    with_head = str(tmp_path / "with_head.weights.h5")
    save_fourierft_weights(source, with_head, include_trainable_weights=True)
    spectra_only = str(tmp_path / "spectra.weights.h5")
    save_fourierft_weights(source, spectra_only)

    model = _three_class_classifier(seed=1)
    keras.utils.set_random_seed(1)
    enable_fourierft(model, n_frequency=20)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"logits/kernel.*\(16, 2\).*\(16, 3\)"):
        load_fourierft_weights(model, with_head)
    assert_same_weights(before, snapshot(model))

    # A model without adapters is neither enabled nor changed.
    plain = _three_class_classifier(seed=2)
    plain_before = snapshot(plain)
    with pytest.raises(ValueError, match="logits/kernel"):
        load_fourierft_weights(plain, with_head)
    assert not fourier_layers(plain)
    assert_same_weights(plain_before, snapshot(plain))

    # The file's spectra differ from the model's: had they been assigned,
    # the snapshot would have shown it.
    load_fourierft_weights(model, spectra_only)
    after = snapshot(model)
    changed = [key for key in before if not np.array_equal(before[key], after[key])]
    assert len(changed) == len(fourier_layers(model)) == 4


def _adapted_functional():
    keras.utils.set_random_seed(0)
    model = models.functional()
    enable_fourierft(model, n_frequency=10, target_layer_names=["query", "value"])
    return model


def test_saved_file_mode_follows_umask_and_existing_file(tmp_path):
    model = _adapted_functional()
    path = tmp_path / "adapter.weights.h5"
    previous = os.umask(0o022)
    try:
        save_fourierft_weights(model, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o640)
        save_fourierft_weights(model, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_save_writes_through_a_symlink(tmp_path):
    model = _adapted_functional()
    for _, layer in fourier_layers(model):
        layer.set_spectrum(np.arange(10, dtype="float32"))
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "adapter.weights.h5"
    real.write_bytes(b"old")
    link = tmp_path / "adapter.weights.h5"
    link.symlink_to(real)
    save_fourierft_weights(model, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    spectra = [layer["spectrum"] for layer in _read_adapter_file(real)["layers"]]
    np.testing.assert_array_equal(spectra, [np.arange(10)] * 2)
    assert sorted(os.listdir(tmp_path / "real")) == ["adapter.weights.h5"]


@pytest.mark.large
def test_temporary_files_of_killed_saves_are_removed(tmp_path):
    # A save killed mid-write leaves its temporary file; the next save of the
    # same file removes it, but not that of a save still running.
    target = tmp_path / "adapter.weights.h5"
    write_slowly = (
        "import time\n"
        "def write(path):\n"
        "    open(path, 'wb').write(b'partial')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "files.write_atomically(sys.argv[1], write)\n"
    )
    for _ in range(3):
        kill(start_child(write_slowly, target))
        assert len(os.listdir(tmp_path)) == 1  # they do not accumulate
    save_fourierft_weights(_adapted_functional(), target)
    assert os.listdir(tmp_path) == ["adapter.weights.h5"]
    running = start_child(write_slowly, target)
    try:
        save_fourierft_weights(_adapted_functional(), target)
        names = sorted(os.listdir(tmp_path))
        assert len(names) == 2 and "adapter.weights.h5" in names
    finally:
        kill(running)
    save_fourierft_weights(_adapted_functional(), target)
    assert os.listdir(tmp_path) == ["adapter.weights.h5"]


def _saved_functional(tmp_path, include_trainable_weights=False):
    model = _adapted_functional()
    for _, layer in fourier_layers(model):
        layer.set_spectrum(np.linspace(-1, 1, 10))
    for variable in model.get_layer("head").weights:
        variable.trainable = include_trainable_weights
    path = tmp_path / "adapter.weights.h5"
    save_fourierft_weights(
        model, path, include_trainable_weights=include_trainable_weights
    )
    return path


def _edit(path, edit):
    with h5py.File(path, "r+") as file:
        edit(file)


def _replace(group, name, create):
    """Replaces dataset `name` by `create(group, name)`, keeping its attrs."""
    attrs = dict(group[name].attrs)
    del group[name]
    data = create(group, name)
    for key, value in attrs.items():
        data.attrs[key] = value


def _set_values(dataset, index, value):
    values = dataset[()]
    values[index] = value
    dataset[...] = values


def _edit_config(dataset, **changes):
    config = json.loads(dataset.attrs["config"])
    config.update(changes)
    dataset.attrs["config"] = json.dumps(config)


def _assert_refused(path, message):
    """Loading `path` raises a ValueError naming the file; nothing changes."""
    keras.utils.set_random_seed(0)
    plain = models.functional()
    adapted = _adapted_functional()
    for model in (plain, adapted):
        before = snapshot(model)
        with pytest.raises(ValueError, match=message) as info:
            load_fourierft_weights(model, path)
        assert str(path) in str(info.value)
        assert_same_weights(before, snapshot(model))
    assert not fourier_layers(plain)
    with pytest.raises(ValueError, match=message):
        _read_adapter_file(path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: _set_values(f["fourierft/0"], 3, np.nan),
        lambda f: _set_values(f["fourierft/1"], 0, -np.inf),
        lambda f: _set_values(f["trainable/0"], 0, np.nan),
    ],
    ids=["nan coefficient", "inf coefficient", "nan trainable weight"],
)
def test_non_finite_values_are_refused(tmp_path, edit):
    path = _saved_functional(tmp_path, include_trainable_weights=True)
    _edit(path, edit)
    _assert_refused(path, "non-finite")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scaling_is_refused(tmp_path, value):
    path = _saved_functional(tmp_path)
    _edit(
        path, lambda f: [_edit_config(f[f"fourierft/{i}"], scaling=value) for i in "01"]
    )
    _assert_refused(path, "scaling=.*not a finite number")


def _external_storage(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(10, dtype="<f4").tobytes())
    return lambda group, name: group.create_dataset(
        name, shape=(10,), dtype="<f4", external=[(str(secret), 0, 40)]
    )


def _virtual(tmp_path):
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as file:
        file["x"] = np.arange(10, dtype="f4")
    layout = h5py.VirtualLayout(shape=(10,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "x", shape=(10,))
    return lambda group, name: group.create_virtual_dataset(name, layout)


def _external_link(tmp_path):
    other = tmp_path / "other.weights.h5"
    with h5py.File(other, "w") as file:
        file["x"] = np.arange(10, dtype="f4")

    def edit(file):
        del file["fourierft/1"]
        file["fourierft/1"] = h5py.ExternalLink(str(other), "/x")

    return edit


def _soft_link(file):
    del file["fourierft/1"]
    file["fourierft/1"] = h5py.SoftLink("/fourierft/0")


@pytest.mark.parametrize(
    "craft, message",
    [
        (
            lambda tmp: lambda f: _replace(f["fourierft"], "0", _external_storage(tmp)),
            "external storage",
        ),
        (
            lambda tmp: lambda f: _replace(f["fourierft"], "0", _virtual(tmp)),
            "virtual dataset",
        ),
        (_external_link, "ExternalLink"),
        (lambda tmp: _soft_link, "SoftLink"),
        (lambda tmp: lambda f: f.create_group("more"), "not the groups"),
        (lambda tmp: lambda f: f.__setitem__("notes", [1.0]), "Dataset 'notes'"),
        (lambda tmp: lambda f: f.__setitem__("kind", np.dtype("f4")), "Datatype"),
        (
            lambda tmp: lambda f: f["fourierft"].create_group("2"),
            "Group '2' where the format has a Dataset",
        ),
        (
            lambda tmp: lambda f: f["trainable"].__setitem__("extra", [1.0]),
            "not 0 to 0",
        ),
    ],
    ids=[
        "external storage",
        "virtual dataset",
        "external link",
        "soft link",
        "extra group",
        "extra dataset",
        "committed datatype",
        "group among datasets",
        "misnamed dataset",
    ],
)
def test_links_external_data_and_foreign_objects_are_refused(tmp_path, craft, message):
    path = _saved_functional(tmp_path)
    _edit(path, craft(tmp_path))
    _assert_refused(path, message)


def test_declared_sizes_are_checked_before_reading(tmp_path):
    # A file of a few KB declares 2**30 coefficients (4 GiB), chunked and
    # never written: refused before anything is read or allocated.
    path = _saved_functional(tmp_path)

    def huge(group, name):
        return group.create_dataset(name, shape=(2**30,), dtype="f4", chunks=(2**16,))

    def edit(file):
        _replace(file["fourierft"], "0", huge)
        _edit_config(
            file["fourierft/0"],
            n_frequency=2**30,
            in_features=2**15,
            out_features=2**15,
        )

    _edit(path, edit)
    assert path.stat().st_size < 20_000
    tracemalloc.start()
    try:
        _assert_refused(path, "declares")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda f: _replace(
                f["fourierft"], "0", lambda g, n: g.create_dataset(n, data=np.zeros(12))
            ),
            r"declares n_frequency=10 but stores an array of shape \(12,\)",
        ),
        (
            lambda f: _replace(
                f["fourierft"],
                "0",
                lambda g, n: g.create_dataset(n, data=np.arange(10)),
            ),
            "int64 values",
        ),
        (
            lambda f: _replace(
                f["fourierft"], "0", lambda g, n: g.create_dataset(n, data=["a"] * 10)
            ),
            "values of shape",
        ),
        (
            lambda f: _replace(
                f["fourierft"],
                "0",
                lambda g, n: g.create_dataset(n, shape=(10,), dtype="f4"),
            ),
            "stores 0 bytes",
        ),
    ],
    ids=["shape", "integer coefficients", "strings", "unwritten"],
)
def test_declared_shapes_and_types_must_fit(tmp_path, edit, message):
    path = _saved_functional(tmp_path)
    _edit(path, edit)
    _assert_refused(path, message)


def _drop_attribute(name):
    def edit(file):
        del file["fourierft/0"].attrs[name]

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_attribute("config"), "lacks the attribute 'config'"),
        (_drop_attribute("path"), "lacks the attribute 'path'"),
        (
            lambda f: f["fourierft/0"].attrs.__setitem__("config", "{not json"),
            "is not JSON",
        ),
        (
            lambda f: f["fourierft/0"].attrs.__setitem__("config", "[1, 2]"),
            "not a JSON object",
        ),
        (
            lambda f: f["fourierft/0"].attrs.__setitem__("config", "{}"),
            "lacks",
        ),
        (lambda f: f["fourierft"].move("1", "2"), r"not 0 to 1"),
        (lambda f: f.attrs.__delitem__("format_version"), "format_version"),
        (
            lambda f: f.attrs.__setitem__("format_version", "one"),
            "format_version is 'one'",
        ),
        (
            lambda f: _edit_config(f["fourierft/0"], n_frequency="10"),
            "not a positive integer",
        ),
        (
            lambda f: _edit_config(f["fourierft/0"], n_frequency=True),
            "not a positive integer",
        ),
        (
            lambda f: _edit_config(f["fourierft/0"], in_features=-6),
            "not a positive integer",
        ),
        (
            lambda f: _edit_config(f["fourierft/0"], n_frequency=100),
            "more than its 6x12 weight has entries",
        ),
        (lambda f: _edit_config(f["fourierft/0"], seed=1.5), "seed=1.5"),
        (
            lambda f: f["fourierft/0"].attrs.__setitem__("path", [1, 2]),
            "attribute 'path'",
        ),
        (lambda f: f.__delitem__("fourierft"), "not the groups"),
    ],
    ids=[
        "no config",
        "no path",
        "bad json",
        "config list",
        "config empty",
        "missing index",
        "no version",
        "text version",
        "text n_frequency",
        "boolean n_frequency",
        "negative features",
        "n_frequency too large",
        "fractional seed",
        "array path",
        "no adapter group",
    ],
)
def test_malformed_descriptions_are_refused(tmp_path, edit, message):
    path = _saved_functional(tmp_path)
    _edit(path, edit)
    _assert_refused(path, message)


def _two_same_shape_layers(order):
    """A model with Dense layers `a` and `b` (6 -> 6), called in `order`."""
    inputs = keras.Input((6,))
    layers = {name: keras.layers.Dense(6, name=name) for name in "ab"}
    x = inputs
    for name in order:
        x = layers[name](x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


@pytest.mark.parametrize("counts", [{"a": 5, "b": 5}, {"a": 5, "b": 7}])
def test_plain_model_in_another_order_gets_spectra_by_path(tmp_path, counts):
    source = _two_same_shape_layers("ab")
    enable_fourierft(
        source,
        n_frequency=5,
        target_layer_names=["a", "b"],
        n_frequency_pattern={"^b$": counts["b"]},
    )
    rng = np.random.default_rng(0)
    spectra = {}
    for path, layer in fourier_layers(source):
        spectra[path] = rng.normal(size=layer.n_frequency).astype("float32")
        layer.set_spectrum(spectra[path])
    path = tmp_path / "adapter.weights.h5"
    save_fourierft_weights(source, path)
    target = _two_same_shape_layers("ba")
    assert [p for p, _ in fourier_layers(source)] == ["a", "b"]
    load_fourierft_weights(target, path)
    loaded = dict(fourier_layers(target))
    assert sorted(loaded) == ["a", "b"]
    for name, spectrum in spectra.items():
        np.testing.assert_allclose(
            ops.convert_to_numpy(loaded[name].spectrum), spectrum, rtol=1e-6
        )


def _kernel(layer):
    return next(v for v in layer.weights if v.name == "kernel")


def test_loading_into_a_merged_model_is_all_or_nothing(tmp_path):
    from keras_fourierft import merge_fourierft

    path = tmp_path / "adapter.weights.h5"
    save_fourierft_weights(_trained_classifier(seed=3), path)
    model = _trained_classifier(seed=4)
    merge_fourierft(model)
    last = fourier_layers(model)[-1][1]
    _kernel(last).assign(ops.add(_kernel(last), 1.0))
    before = snapshot(model)
    with pytest.raises(ValueError, match="changed while the adapter was merged"):
        load_fourierft_weights(model, path)
    assert_same_weights(before, snapshot(model))
    assert all(layer.merged for _, layer in fourier_layers(model))


def _add_stored_weight(path, weight_path, value):
    with h5py.File(path, "r+") as file:
        index = str(len(file["trainable"]))
        file["trainable"].create_dataset(index, data=value)
        file["trainable"][index].attrs["path"] = weight_path


@pytest.mark.parametrize("adapted", [True, False], ids=["adapted", "plain"])
def test_stored_weights_only_reach_trainable_variables(tmp_path, adapted):
    # The adapted layer's frozen kernel and the frozen `value` kernel's bias
    # are not trainable: a file may not overwrite them.
    path = _saved_functional(tmp_path, include_trainable_weights=True)
    _add_stored_weight(path, "query/kernel", np.ones((6, 12), "float32"))
    keras.utils.set_random_seed(0)
    model = _adapted_functional() if adapted else models.functional()
    for variable in model.get_layer("head").weights:
        variable.trainable = True
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'query/kernel'.*not trainable"):
        load_fourierft_weights(model, path)
    assert_same_weights(before, snapshot(model))


def test_frozen_head_is_not_overwritten(tmp_path):
    path = _saved_functional(tmp_path, include_trainable_weights=True)
    model = _adapted_functional()
    assert not model.get_layer("head").kernel.trainable
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'head/kernel'.*not trainable"):
        load_fourierft_weights(model, path)
    assert_same_weights(before, snapshot(model))


def test_trainable_head_loads(tmp_path):
    path = _saved_functional(tmp_path, include_trainable_weights=True)
    saved = dict(_read_adapter_file(path)["extra"])
    model = _adapted_functional()
    head = model.get_layer("head")
    for variable in head.weights:
        variable.trainable = True
        variable.assign(np.zeros(variable.shape, "float32"))
    assert sorted(saved) == ["head/bias", "head/kernel"]
    assert np.abs(saved["head/kernel"]).max() > 0
    load_fourierft_weights(model, path)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(head.kernel), saved["head/kernel"]
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(head.bias), saved["head/bias"])


def test_a_directory_is_not_reported_missing(tmp_path):
    folder = tmp_path / "adapter.weights.h5"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder") as info:
        load_fourierft_weights(_adapted_functional(), folder)
    assert "No adapter file" not in str(info.value)
    assert str(folder) in str(info.value)


def test_saving_non_finite_coefficients_refuses_and_keeps_the_file(tmp_path):
    model = models.bert_classifier()
    enable_fourierft(model, n_frequency=8)
    path = str(tmp_path / "adapter.weights.h5")
    save_fourierft_weights(model, path)
    before = open(path, "rb").read()
    layer = fourier_layers(model)[1][1]
    values = np.array(layer.coefficients.numpy())
    values[3] = np.inf
    layer.coefficients.assign(values)
    with pytest.raises(ValueError, match="NaN or infinity.*unchanged"):
        save_fourierft_weights(model, path)
    assert open(path, "rb").read() == before
