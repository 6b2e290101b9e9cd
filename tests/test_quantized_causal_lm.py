"""Adapters on int8-quantized causal LMs train like adapters on float ones.

`model.quantize("int8")` also quantizes a causal LM's reversible token
embedding, which computes the logits; Keras's int8 logits path rounds its
input and so passes no useful gradient to the layers below it. The package
gives that path a straight-through gradient (`keras_internals`); these tests
compare with the float model and with a model whose embedding stays float.
"""

import keras
import keras_hub
import numpy as np
import pytest

import keras_fourierft as kft
from tests.helpers import gradient

VOCABULARY = 128


def causal_lm(family, tie_weights=True):
    keras.utils.set_random_seed(0)
    common = dict(vocabulary_size=VOCABULARY, num_layers=2, hidden_dim=32)
    if family == "llama":
        backbone = keras_hub.models.LlamaBackbone(
            num_query_heads=4,
            num_key_value_heads=2,
            intermediate_dim=64,
            tie_word_embeddings=tie_weights,
            **common,
        )
        return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    backbone = keras_hub.models.GemmaBackbone(
        num_query_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_dim=64,
        **common,
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def batch(seed=1, size=4, length=12):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, VOCABULARY, (size, length + 1)).astype("int32")
    inputs = {
        "token_ids": tokens[:, :-1],
        "padding_mask": np.ones((size, length), "int32"),
    }
    return inputs, tokens[:, 1:]


def adapted(family, quantize, tie_weights=True):
    model = causal_lm(family, tie_weights)
    if quantize == "all":
        model.backbone.quantize("int8")
    elif quantize == "dense":
        model.backbone.quantize(
            "int8", filters=lambda layer: not isinstance(layer, keras.layers.Embedding)
        )
    kft.enable_fourierft(
        model,
        n_frequency=64,
        target_layer_names=["query", "value"],
        coefficient_initializer="normal",
    )
    return model


def first_coefficient_gradient(model):
    inputs, labels = batch()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variable = kft.fourier_layers(model)[0][1].coefficients
    return gradient(lambda: loss(labels, model(inputs)), variable).ravel()


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(
    "family, tie_weights", [("llama", True), ("llama", False), ("gemma", True)]
)
def test_int8_base_gives_the_adapters_the_float_gradient(family, tie_weights):
    reference = first_coefficient_gradient(adapted(family, None, tie_weights))
    dense_only = first_coefficient_gradient(adapted(family, "dense", tie_weights))
    everything = first_coefficient_gradient(adapted(family, "all", tie_weights))
    # int8 Dense layers alone keep the gradient (Keras's straight-through
    # int8 matmul); the int8 embedding must not lose it either.
    assert cosine(reference, dense_only) > 0.99
    assert cosine(reference, everything) > 0.99
    # Of the float gradient's size (int8 rounding moves it by ~10% on the
    # tiny Gemma), not vanishing or blown up.
    np.testing.assert_allclose(
        np.linalg.norm(everything), np.linalg.norm(reference), rtol=0.25
    )


def test_int8_logits_keep_keras_values():
    plain = causal_lm("llama")
    plain.backbone.quantize("int8")
    inputs, _ = batch()
    expected = keras.ops.convert_to_numpy(plain(inputs))
    kft.enable_fourierft(
        plain,
        n_frequency=64,
        target_layer_names=["query"],
        coefficient_initializer="zeros",
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(inputs)), expected, rtol=1e-5, atol=1e-5
    )


def losses(model, steps=10):
    inputs, labels = batch()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(inputs, labels, epochs=steps, batch_size=4, verbose=0)
    return history.history["loss"]


def test_int8_base_trains_like_the_float_base():
    float_curve = losses(adapted("llama", None))
    int8_curve = losses(adapted("llama", "all"))
    float_drop = float_curve[0] - float_curve[-1]
    int8_drop = int8_curve[0] - int8_curve[-1]
    assert float_drop > 0.05
    assert int8_drop > 0.8 * float_drop, (float_curve, int8_curve)
    np.testing.assert_allclose(int8_curve, float_curve, atol=0.01)
