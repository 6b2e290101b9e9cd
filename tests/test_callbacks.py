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


def _small_setup(samples=12):
    keras.utils.set_random_seed(0)
    model = models.functional()
    enable_fourierft(model, n_frequency=10, target_layer_names=["query", "value"])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 6)).astype("float32")
    y = rng.normal(size=(samples, 3)).astype("float32")
    return model, x, y


def test_is_a_model_checkpoint():
    checkpoint = FourierFTCheckpoint("a.weights.h5")
    assert isinstance(checkpoint, keras.callbacks.ModelCheckpoint)


def test_batch_level_saving_fills_in_the_batch(tmp_path):
    model, x, y = _small_setup()
    pattern = str(tmp_path / "adapter-{epoch}-{batch}.weights.h5")
    checkpoint = FourierFTCheckpoint(pattern, save_freq=2)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[checkpoint])
    assert sorted(os.listdir(tmp_path)) == [
        f"adapter-{epoch}-{batch}.weights.h5" for epoch in (1, 2) for batch in (2, 4, 6)
    ]
    assert checkpoint.last_saved == str(tmp_path / "adapter-2-6.weights.h5")


def test_batch_level_best_only_on_the_training_loss(tmp_path):
    model, x, y = _small_setup()
    path = tmp_path / "best.weights.h5"
    checkpoint = FourierFTCheckpoint(
        path, monitor="loss", save_best_only=True, save_freq=1
    )
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[checkpoint])
    assert path.exists() and checkpoint.best is not None


def test_field_missing_from_the_logs_is_a_clear_error(tmp_path):
    model, x, y = _small_setup()
    pattern = str(tmp_path / "adapter-{val_loss:.3f}.weights.h5")
    with pytest.raises(
        ValueError,
        match=r"uses 'val_loss', which the epoch logs.*among \['epoch', 'loss'\]",
    ):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[FourierFTCheckpoint(pattern)])
    pattern = str(tmp_path / "adapter-{batch}.weights.h5")
    with pytest.raises(ValueError, match="'batch'"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[FourierFTCheckpoint(pattern)])
    assert os.listdir(tmp_path) == []


def test_best_only_at_batch_level_needs_a_batch_metric(tmp_path):
    model, x, y = _small_setup()
    checkpoint = FourierFTCheckpoint(
        tmp_path / "best.weights.h5", save_best_only=True, save_freq=3
    )
    with pytest.raises(ValueError, match="'val_loss', which the batch logs"):
        model.fit(
            x,
            y,
            validation_data=(x, y),
            batch_size=2,
            epochs=1,
            verbose=0,
            callbacks=[checkpoint],
        )


def test_threshold_and_mode(tmp_path):
    model, x, y = _small_setup()
    never = FourierFTCheckpoint(
        tmp_path / "never.weights.h5",
        monitor="loss",
        save_best_only=True,
        initial_value_threshold=0.0,
    )
    first = FourierFTCheckpoint(
        tmp_path / "first-{epoch}.weights.h5",
        monitor="loss",
        save_best_only=True,
        mode="max",
    )
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[never, first])
    losses = history.history["loss"]
    assert losses == sorted(losses, reverse=True)  # the loss only falls
    assert os.listdir(tmp_path) == ["first-1.weights.h5"]
    assert never.best == 0.0 and first.best == pytest.approx(losses[0])


@pytest.mark.parametrize("save_freq", [0, -1, True, "batch", 2.5])
def test_bad_save_freq_and_mode(save_freq):
    with pytest.raises(ValueError, match="save_freq"):
        FourierFTCheckpoint("a.weights.h5", save_freq=save_freq)
    with pytest.raises(ValueError, match="mode"):
        FourierFTCheckpoint("a.weights.h5", mode="up")


def test_a_diverged_step_keeps_the_last_good_file(tmp_path):
    model, x, y = _setup()
    path = str(tmp_path / "adapter.weights.h5")

    class Diverge(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                layer = fourier_layers(self.model)[0][1]
                values = np.array(layer.coefficients.numpy())
                values[0] = np.nan
                layer.coefficients.assign(values)

    with pytest.warns(UserWarning, match="NaN or infinity.*unchanged"):
        model.fit(
            x,
            y,
            epochs=2,
            verbose=0,
            callbacks=[Diverge(), FourierFTCheckpoint(path, verbose=0)],
        )
    # The file of epoch 1 is still there, and loads.
    fresh, _, _ = _setup()
    load_fourierft_weights(fresh, path)
    assert (
        all(
            np.isfinite(layer.coefficients.numpy()).all()
            for _, layer in fourier_layers(fresh)
        )
        and len(fourier_layers(fresh)) == 4
    )
