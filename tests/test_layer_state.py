"""Adapter state changes reach compiled functions (predict, fit, generate).

Whatever changes an adapter's state (a layer method, a layer attribute or
a model-level function), the next `predict`/`evaluate`/`fit`/`generate`
computes what an eager `model(x)` computes.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops
from keras.src import testing

import keras_fourierft
from keras_fourierft import layers as fourier_layers_module
from keras_fourierft.config import FourierFTConfig
from tests import models


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(12, activation="relu", name="query"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    return model


def _x():
    return np.random.default_rng(1).normal(size=(4, 6)).astype("float32")


def _config(**changes):
    return FourierFTConfig(n_frequency=20, scaling=50.0, **changes)


def _eager(model, x):
    return ops.convert_to_numpy(model(x))


class CompiledFunctionsFollowLayerStateTest(testing.TestCase):
    def _adapted_and_compiled(self):
        model = _model()
        model.compile(loss="mse")
        layer = fourier_layers_module.adapt_in_place(model.layers[0], _config())
        x = _x()
        model.predict(x, verbose=0)
        return model, layer, x

    def assert_predict_is_eager(self, model, x):
        self.assertAllClose(model.predict(x, verbose=0), _eager(model, x), atol=1e-5)
        self.assertAllClose(model.predict_on_batch(x), _eager(model, x), atol=1e-5)

    def test_layer_merge_after_predict(self):
        model, layer, x = self._adapted_and_compiled()
        before = model.predict(x, verbose=0)
        layer.merge()
        self.assert_predict_is_eager(model, x)
        self.assertAllClose(model.predict(x, verbose=0), before, atol=1e-5)

    def test_layer_unmerge_after_predict(self):
        model, layer, x = self._adapted_and_compiled()
        layer.merge()
        model.predict(x, verbose=0)
        layer.unmerge()
        self.assert_predict_is_eager(model, x)

    def test_adapter_enabled_attribute_after_predict(self):
        model, layer, x = self._adapted_and_compiled()
        adapted = model.predict(x, verbose=0)
        layer.adapter_enabled = False
        self.assert_predict_is_eager(model, x)
        self.assertNotAllClose(model.predict(x, verbose=0), adapted)
        layer.adapter_enabled = True
        self.assertAllClose(model.predict(x, verbose=0), adapted, atol=1e-5)

    def test_remove_after_predict(self):
        for merge in (True, False):
            model, layer, x = self._adapted_and_compiled()
            fourier_layers_module.remove_in_place(layer, merge=merge)
            self.assert_predict_is_eager(model, x)

    def test_evaluate_follows_state(self):
        model, layer, x = self._adapted_and_compiled()
        y = np.zeros((4, 3), "float32")
        model.evaluate(x, y, verbose=0)
        layer.adapter_enabled = False
        expected = float(np.mean((_eager(model, x) - y) ** 2))
        self.assertAllClose(model.evaluate(x, y, verbose=0), expected, atol=1e-5)

    def test_adapting_a_called_layer_warns(self):
        model = _model()
        model.compile(loss="mse")
        model.predict(_x(), verbose=0)
        with pytest.warns(UserWarning, match="enable_fourierft"):
            fourier_layers_module.adapt_layer(model.layers[0], _config())

    def test_adapting_an_uncalled_layer_does_not_warn(self):
        layer = keras.layers.Dense(4)
        layer.build((None, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fourier_layers_module.adapt_layer(layer, FourierFTConfig(n_frequency=5))


class StateChangesFromCallbacksTest(testing.TestCase):
    def _fit(self, callback):
        model = _model()
        layer = fourier_layers_module.adapt_in_place(model.layers[0], _config())
        model.compile(optimizer="adam", loss="mse")
        x = np.random.default_rng(2).normal(size=(16, 6)).astype("float32")
        y = np.zeros((16, 3), "float32")
        model.fit(x, y, batch_size=4, epochs=3, callbacks=[callback], verbose=0)
        self.assertAllClose(model.predict(x, verbose=0), _eager(model, x), atol=1e-5)
        return layer

    def test_toggle_between_batches(self):
        seen = []

        class Toggle(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                query = self.model.get_layer("query")
                query.adapter_enabled = batch % 2 == 1
                x = np.ones((2, 6), "float32")
                seen.append((self.model.predict_on_batch(x), _eager(self.model, x)))

        layer = self._fit(Toggle())
        self.assertTrue(layer.adapter_enabled)
        self.assertLen(seen, 12)
        for compiled, eager in seen:
            self.assertAllClose(compiled, eager, atol=1e-5)
        self.assertNotAllClose(seen[0][0], seen[1][0])

    @pytest.mark.skipif(
        keras.backend.backend() == "jax",
        reason="JAX: Keras's optimizer keeps the trainable list of the fit, "
        "and merging makes the coefficients non-trainable",
    )
    def test_merge_and_unmerge_between_epochs(self):
        seen = []

        class Merge(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                query = self.model.get_layer("query")
                if epoch == 0:
                    query.merge()
                    x = np.ones((2, 6), "float32")
                    seen.append(self.model.predict_on_batch(x))
                    seen.append(_eager(self.model, x))
                elif epoch == 1:
                    query.unmerge()

        layer = self._fit(Merge())
        self.assertFalse(layer.merged)
        self.assertLen(seen, 2)
        self.assertAllClose(seen[0], seen[1], atol=1e-5)

    def test_model_level_functions_from_callbacks(self):
        seen = []

        class Change(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                # On and off between batches, on again at an epoch's end
                # (4 batches), except in epoch 1, when the adapters are merged.
                if self.epoch != 1:
                    keras_fourierft.set_fourierft_enabled(self.model, batch % 2 == 1)

            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    keras_fourierft.merge_fourierft(self.model)
                    x = np.ones((2, 6), "float32")
                    seen.append((self.model.predict_on_batch(x), _eager(self.model, x)))
                elif epoch == 1:
                    keras_fourierft.unmerge_fourierft(self.model)

        if keras.backend.backend() == "jax":
            # Merging changes which variables train, which Keras's JAX
            # trainer cannot follow inside `fit`: a clear refusal, no change.
            with self.assertRaisesRegex(ValueError, "during `fit` on JAX"):
                self._fit(Change())
            return
        layer = self._fit(Change())
        self.assertFalse(layer.merged)
        self.assertLen(seen, 1)
        self.assertAllClose(seen[0][0], seen[0][1], atol=1e-5)


def _causal_lm(family):
    return models.causal_lm(family)


def _prompt():
    token_ids = np.zeros((2, 10), "int32")
    token_ids[:, :3] = [[5, 9, 12], [7, 3, 30]]
    padding_mask = np.zeros((2, 10), "bool")
    padding_mask[:, :3] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _greedy_eager(model, prompt):
    """Greedy decoding without any compiled function: a reference."""
    token_ids = prompt["token_ids"].copy()
    mask = prompt["padding_mask"].copy()
    for position in range(3, token_ids.shape[1]):
        logits = ops.convert_to_numpy(
            model({"token_ids": token_ids, "padding_mask": mask})
        )
        token_ids[:, position] = logits[:, position - 1].argmax(-1)
        mask[:, position] = True
    return token_ids


def _adapted_query_layers(model):
    found = [
        layer
        for layer in model.backbone._flatten_layers(include_self=False)
        if layer.name in ("query", "value")
    ]
    assert len(found) == 4
    return found


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_generate_follows_every_layer_state_change(family):
    model = _causal_lm(family)
    model.compile(sampler="greedy")
    prompt = _prompt()
    model.generate(prompt, stop_token_ids=None)
    targets = _adapted_query_layers(model)
    config = FourierFTConfig(n_frequency=40, scaling=3000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = [fourier_layers_module.adapt_layer(t, config) for t in targets]
    # Adapting layers of a model that already generated: through the model.
    model.generate_function = None

    def check(what):
        generated = model.generate(prompt, stop_token_ids=None)["token_ids"]
        np.testing.assert_array_equal(
            np.asarray(generated), _greedy_eager(model, prompt), err_msg=what
        )
        return np.asarray(generated)

    adapted_tokens = check("adapted")
    for layer in adapted:
        layer.adapter_enabled = False
    plain_tokens = check("disabled")
    assert not np.array_equal(adapted_tokens, plain_tokens)
    for layer in adapted:
        layer.adapter_enabled = True
    check("enabled again")
    for layer in adapted:
        layer.merge()
    check("merged")
    for layer in adapted:
        layer.unmerge()
    check("unmerged")
    for layer in adapted:
        fourier_layers_module.remove_in_place(layer, merge=True)
    np.testing.assert_array_equal(check("unloaded"), adapted_tokens)
