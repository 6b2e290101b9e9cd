import os

import keras
import numpy as np
import pytest

from keras_fourierft import FourierFTCheckpoint
from keras_fourierft import enable_fourierft
from keras_fourierft import fourier_layers
from keras_fourierft import load_fourierft_weights
from tests import models


def _setup():
    # A KerasHub task model turns arrays into a `tf.data` pipeline, to which
    # `fit`'s default `shuffle=True` does not apply: the fits pass
    # `shuffle=False`.
    model = models.bert_classifier()
    enable_fourierft(model, n_frequency=16, coefficient_initializer="zeros")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x = models.bert_inputs(batch=8)
    y = np.array([0, 1] * 4)
    return model, x, y


def test_checkpoint_every_epoch_with_formatting(tmp_path):
    model, x, y = _setup()
    pattern = str(tmp_path / "adapter-{epoch:02d}.weights.h5")
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[FourierFTCheckpoint(pattern)],
    )
    assert sorted(os.listdir(tmp_path)) == [
        "adapter-01.weights.h5",
        "adapter-02.weights.h5",
    ]


def test_best_only_with_early_stopping_reduce_lr_and_backup(tmp_path):
    model, x, y = _setup()
    best = str(tmp_path / "best.weights.h5")
    checkpoint = FourierFTCheckpoint(
        best, monitor="val_loss", save_best_only=True, include_trainable_weights=True
    )
    history = model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[
            checkpoint,
            keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(patience=1),
            keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
        ],
    )
    losses = history.history["val_loss"]
    assert checkpoint.best == pytest.approx(min(losses), rel=1e-6)
    fresh, _, _ = _setup()
    load_fourierft_weights(fresh, best)
    assert len(fourier_layers(fresh)) == 4
    value = fresh.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert value == pytest.approx(min(losses), rel=1e-3, abs=1e-4)


def test_missing_monitor_and_bad_path():
    model, x, y = _setup()
    with pytest.raises(ValueError, match="val_accuracy"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[
                FourierFTCheckpoint(
                    "/tmp/x.weights.h5", monitor="val_accuracy", save_best_only=True
                )
            ],
        )
    with pytest.raises(ValueError, match="weights.h5"):
        FourierFTCheckpoint("adapter.h5")
