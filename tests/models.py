"""Small models shared by the tests."""

import keras
import keras_hub
import numpy as np


def bert_backbone(dropout=0.1):
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
        dropout=dropout,
    )


def bert_classifier(seed=0, dropout=0.1):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertTextClassifier(
        backbone=bert_backbone(dropout),
        num_classes=2,
        preprocessor=None,
        dropout=dropout,
    )


def bert_inputs(batch=4, length=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, 50, size=(batch, length)).astype("int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }


def sequential():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(12, activation="relu", name="query"),
            keras.layers.Dense(3, name="head"),
        ]
    )


def functional():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(12, activation="relu", name="query")(inputs)
    x = keras.layers.EinsumDense("ab,bc->ac", (8,), bias_axes="c", name="value")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.query = keras.layers.Dense(12, name="query")
        self.blocks = [keras.layers.Dense(12, name=f"value_{i}") for i in range(2)]
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x):
        x = self.query(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 6), "float32"))
    return model


def causal_lm(family):
    """A tiny random KerasHub Llama or Gemma causal LM, no preprocessor."""
    keras.utils.set_random_seed(0)
    settings = dict(
        vocabulary_size=64,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    if family == "llama":
        backbone = keras_hub.models.LlamaBackbone(**settings)
        return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    backbone = keras_hub.models.GemmaBackbone(head_dim=8, **settings)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
