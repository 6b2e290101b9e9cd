import keras
import numpy as np
import pytest

import keras_fourierft
from keras_fourierft import enable_fourierft
from keras_fourierft import fourier_layers
from tests import models


# KerasHub task models cannot be compiled from a saved config (see
# pyproject.toml), so Keras cannot restore their optimizer's state from a
# `.keras` file and says so; the adapter and weights are what is checked here.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_kerashub_classifier_round_trips_through_keras_file(tmp_path):
    model = models.bert_classifier()
    enable_fourierft(model, n_frequency=20, n_frequency_pattern={"value$": 12})
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = models.bert_inputs()
    model.fit(x, np.array([0, 1, 0, 1]), epochs=1, verbose=0, shuffle=False)
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    restored = keras_fourierft.load_model(path)
    layers = fourier_layers(restored)
    assert [layer.n_frequency for _, layer in layers] == [
        layer.n_frequency for _, layer in fourier_layers(model)
    ]
    assert {layer.n_frequency for _, layer in layers} == {20, 12}
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, atol=1e-5)
    assert {v.path for v in restored.trainable_weights} == {
        v.path for v in model.trainable_weights
    }


def test_functional_model_loads_with_either_loader(tmp_path):
    model = models.functional()
    enable_fourierft(model, target_layer_names=["query"], n_frequency=10)
    x = np.ones((2, 6), "float32")
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    for loader in (keras.saving.load_model, keras_fourierft.load_model):
        restored = loader(path)
        assert len(fourier_layers(restored)) == 1
        np.testing.assert_allclose(restored.predict(x, verbose=0), expected, atol=1e-6)


def test_load_model_rejects_other_files(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("nope")
    with pytest.raises(ValueError, match="not a `.keras` archive"):
        keras_fourierft.load_model(str(path))


def test_load_model_keeps_lr_multiplier_of_a_kerashub_model(tmp_path):
    # 5.0 is neither the default nor the fallback of `enable_fourierft`.
    model = models.bert_classifier()
    enable_fourierft(model, n_frequency=20, lr_multiplier=5.0)
    assert [layer.lr_multiplier for _, layer in fourier_layers(model)] == [5.0] * 4
    x = models.bert_inputs()
    expected = model.predict(x, verbose=0)
    plain = models.bert_classifier()
    assert not np.allclose(plain.predict(x, verbose=0), expected, atol=1e-3)
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    restored = keras_fourierft.load_model(path)
    layers = fourier_layers(restored)
    assert [layer.lr_multiplier for _, layer in layers] == [5.0] * 4
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, atol=1e-5)
