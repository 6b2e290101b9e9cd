"""The 1.0 public API: one verb per operation for models and layers."""

import keras
import numpy as np
import pytest
from keras.src import testing

import keras_fourierft
from keras_fourierft import FourierFTConfig
from tests import models

PUBLIC = [
    "FourierFTConfig",
    "FourierDense",
    "FourierEinsumDense",
    "enable_fourierft",
    "set_fourierft_enabled",
    "merge_fourierft",
    "unmerge_fourierft",
    "unload_fourierft",
    "save_fourierft_weights",
    "load_fourierft_weights",
    "save_peft_adapter",
    "load_peft_adapter",
    "AdapterBank",
    "FourierFTCheckpoint",
    "load_model",
    "frequency_locations",
    "fourierft_layers",
]


def _dense(units=6, inputs=8, seed=0):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.Dense(units, name="query")
    layer.build((None, inputs))
    return layer


def _reference_delta(layer):
    # delta_W = scaling * Re(IFFT2(F)) in the (out, in) layout, transposed.
    rows, cols = keras_fourierft.frequency_locations(
        layer.units, layer.kernel.shape[0], layer.n_frequency, layer.seed
    )
    spectrum = np.zeros((layer.units, layer.kernel.shape[0]))
    spectrum[rows, cols] = keras.ops.convert_to_numpy(layer.spectrum)
    return (layer.scaling * np.fft.ifft2(spectrum).real).T


class PublicApiTest(testing.TestCase):
    def test_all_lists_exactly_the_public_names(self):
        self.assertEqual(sorted(keras_fourierft.__all__), sorted(PUBLIC))
        for name in PUBLIC:
            self.assertTrue(getattr(keras_fourierft, name).__doc__, name)

    def test_enable_on_a_layer_with_a_config_and_overrides(self):
        layer = _dense()
        x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
        base = keras.ops.convert_to_numpy(layer(x))
        config = FourierFTConfig(n_frequency=10, scaling=20.0, seed=3)
        summary = keras_fourierft.enable_fourierft(layer, config, n_frequency=12)
        self.assertEqual((layer.n_frequency, layer.scaling, layer.seed), (12, 20.0, 3))
        self.assertEqual(
            [(a.path, a.n_frequency) for a in summary.layers], [("query", 12)]
        )
        self.assertEqual(summary.coefficient_params, 12)
        self.assertEqual(summary.other_trainable_params, 0)
        self.assertEqual(summary.total_params, 8 * 6 + 6 + 12)
        delta = _reference_delta(layer)
        self.assertGreater(np.abs(delta).max(), 1e-3)
        self.assertAllClose(layer(x), base + x @ delta, atol=1e-4)

    def test_model_and_layer_share_defaults(self):
        model = models.functional()
        keras_fourierft.enable_fourierft(
            model, target_layer_names=["query"], n_frequency=5
        )
        layer = _dense()
        keras_fourierft.enable_fourierft(layer, n_frequency=5)
        (adapted,) = keras_fourierft.fourierft_layers(model).values()
        self.assertEqual(adapted.fourierft_config, layer.fourierft_config)
        self.assertEqual(layer.fourierft_config, FourierFTConfig(n_frequency=5))

    def test_layer_verbs(self):
        layer = _dense()
        x = np.ones((2, 8), "float32")
        base = keras.ops.convert_to_numpy(layer(x))
        kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
        keras_fourierft.enable_fourierft(layer, n_frequency=10)
        adapted = keras.ops.convert_to_numpy(layer(x))
        self.assertNotAllClose(adapted, base, atol=1e-4)
        keras_fourierft.set_fourierft_enabled(layer, False)
        self.assertAllClose(layer(x), base, atol=1e-6)
        keras_fourierft.set_fourierft_enabled(layer, True)
        keras_fourierft.merge_fourierft(layer)
        self.assertTrue(layer.merged)
        self.assertAllClose(layer(x), adapted, atol=1e-5)
        keras_fourierft.unmerge_fourierft(layer)
        self.assertAllClose(layer.kernel, kernel, atol=0)
        self.assertIs(keras_fourierft.unload_fourierft(layer), layer)
        self.assertIs(type(layer), keras.layers.Dense)
        self.assertAllClose(layer(x), adapted, atol=1e-5)

    def test_fourierft_layers_maps_paths_to_layers(self):
        model = models.functional()
        keras_fourierft.enable_fourierft(
            model, target_layer_names=["query", "value"], n_frequency=4
        )
        layers = keras_fourierft.fourierft_layers(model)
        self.assertEqual(list(layers), ["query", "value"])
        self.assertIs(layers["value"], model.get_layer("value"))

    def test_bad_calls_name_the_argument(self):
        layer = _dense()
        with self.assertRaisesRegex(ValueError, "target_layer_names"):
            keras_fourierft.enable_fourierft(layer, target_layer_names=["query"])
        with self.assertRaisesRegex(TypeError, "config"):
            keras_fourierft.enable_fourierft(layer, {"n_frequency": 4})
        with self.assertRaisesRegex(TypeError, "n_frequencies"):
            keras_fourierft.enable_fourierft(layer, n_frequencies=4)
        with self.assertRaisesRegex(TypeError, "enabled"):
            keras_fourierft.set_fourierft_enabled(layer, "no")
        with self.assertRaisesRegex(ValueError, "no FourierFT adapters"):
            keras_fourierft.merge_fourierft(layer)
        with self.assertRaisesRegex(TypeError, "Dense/EinsumDense"):
            keras_fourierft.enable_fourierft(keras.layers.Conv1D(3, 2))
        self.assertIs(type(layer), keras.layers.Dense)


DEPRECATED = [
    "adapt_layer",
    "remove_adapter",
    "fourier_layers",
    "walk_layers",
    "read_peft_adapter",
    "spectral_delta",
    "kernel_view",
    "default_target_layer_names",
    "reset_compiled_functions",
    "FourierFTSummary",
]


@pytest.mark.parametrize("name", DEPRECATED)
def test_deprecated_names_warn_and_stay_out_of_all(name):
    assert name not in keras_fourierft.__all__
    with pytest.warns(DeprecationWarning, match=f"keras_fourierft.{name}"):
        value = getattr(keras_fourierft, name)
    assert callable(value)


def _deprecated(name):
    with pytest.warns(DeprecationWarning):
        return getattr(keras_fourierft, name)


def test_deprecated_layer_functions_behave_as_before():
    layer = _dense()
    x = np.ones((2, 8), "float32")
    base = keras.ops.convert_to_numpy(layer(x))
    assert _deprecated("adapt_layer")(layer, n_frequency=7) is layer
    assert layer.n_frequency == 7
    adapted = keras.ops.convert_to_numpy(layer(x))
    assert _deprecated("remove_adapter")(layer, merge=False) is layer
    assert type(layer) is keras.layers.Dense
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), base, atol=1e-6)
    assert not np.allclose(adapted, base, atol=1e-4)


def test_deprecated_model_functions_behave_as_before():
    model = models.bert_classifier()
    assert _deprecated("default_target_layer_names")(model) == (
        model.backbone.default_lora_layer_names()
    )
    summary = keras_fourierft.enable_fourierft(model, n_frequency=4)
    assert isinstance(summary, _deprecated("FourierFTSummary"))
    pairs = _deprecated("fourier_layers")(model)
    assert pairs == list(keras_fourierft.fourierft_layers(model).items())
    walked = dict(_deprecated("walk_layers")(model))
    assert all(walked[path] is layer for path, layer in pairs)
    assert len(walked) > len(pairs)
    model.predict(models.bert_inputs(), verbose=0)
    assert model.predict_function is not None
    _deprecated("reset_compiled_functions")(model)
    assert model.predict_function is None


def test_deprecated_math_names_are_the_math_functions():
    from keras_fourierft import spectral

    assert _deprecated("spectral_delta") is spectral.spectral_delta
    view = _deprecated("kernel_view")("btd,ndh->btnh", (12, 768, 64))
    assert view["in_features"] == 768 and view["out_features"] == 12 * 64
