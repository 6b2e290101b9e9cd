"""`FourierFTCheckpoint`: save adapter files during `fit`."""

import os
import string
import warnings

import keras

from keras_fourierft import keras_internals
from keras_fourierft.adapters import NonFiniteWeightsError
from keras_fourierft.adapters import save_fourierft_weights


class FourierFTCheckpoint(keras.callbacks.ModelCheckpoint):
    """Saves the FourierFT adapter file during `fit`, like `ModelCheckpoint`.

    Writes adapter files (`save_fourierft_weights`: kilobytes, atomically)
    instead of the model, with `ModelCheckpoint`'s `save_freq`,
    `save_best_only`, `mode`, `initial_value_threshold` and `filepath`
    fields (`{epoch:02d}`, `{batch}`, `{val_loss:.3f}`); a field the logs do
    not have raises a `ValueError` naming it.

    Args:
        filepath: Path ending in `.weights.h5`, optionally with fields.
        monitor: Metric name to compare for `save_best_only`.
        save_best_only: If True, save only when `monitor` improves; the logs
            must then hold `monitor` whenever a save is due.
        mode: `"auto"`, `"min"` or `"max"`; `"auto"` minimises losses and
            follows the direction of the compiled metric named by `monitor`.
        include_trainable_weights: Also store other trainable weights (e.g.
            the task head), see `save_fourierft_weights`.
        initial_value_threshold: Optional value `monitor` has to beat first.
        verbose: 0 or 1; 1 prints a line per save.
        save_freq: `"epoch"` or a positive number of batches.

    Example:

    ```python
    best = FourierFTCheckpoint("best.weights.h5", save_best_only=True)
    model.fit(x, y, validation_data=(x_val, y_val), callbacks=[best])
    ```
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        save_best_only=False,
        mode="auto",
        include_trainable_weights=False,
        initial_value_threshold=None,
        verbose=0,
        save_freq="epoch",
    ):
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"`mode` must be 'auto', 'min' or 'max'. Received: {mode!r}"
            )
        if not os.fspath(filepath).endswith(".weights.h5"):
            raise ValueError(
                "FourierFTCheckpoint writes adapter files, whose names end in "
                f"'.weights.h5'. Received: filepath={filepath!r}"
            )
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, int)
            or save_freq < 1
        ):
            raise ValueError(
                "`save_freq` must be 'epoch' or a positive number of batches. "
                f"Received: save_freq={save_freq!r}"
            )
        super().__init__(
            filepath,
            monitor=monitor,
            verbose=verbose,
            save_best_only=save_best_only,
            save_weights_only=True,
            mode=mode,
            save_freq=save_freq,
            initial_value_threshold=initial_value_threshold,
        )
        self.include_trainable_weights = include_trainable_weights
        self.last_saved = None
        self._epoch, self._batches = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch":
            self._batches += 1
            if self._batches % self.save_freq == 0:
                self._save(self._epoch, batch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _save(self, epoch, batch, logs):
        filepath = self._filepath(epoch, batch, logs)
        if self.save_best_only and not self._improved(logs, batch):
            return
        folder = os.path.dirname(filepath)
        if folder:
            os.makedirs(folder, exist_ok=True)
        try:
            save_fourierft_weights(
                self.model,
                filepath,
                include_trainable_weights=self.include_trainable_weights,
            )
        except NonFiniteWeightsError as error:
            # A diverged step must not replace the last good adapter.
            warnings.warn(str(error), stacklevel=2)
            return
        self.last_saved = filepath
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: FourierFT adapter saved to {filepath}")

    def _improved(self, logs, batch):
        when = "epoch" if batch is None else "batch"
        if self.monitor not in logs:
            raise ValueError(
                f"FourierFTCheckpoint monitors {self.monitor!r}, which the "
                f"{when} logs do not have (available: {sorted(logs)}). Pass "
                "validation data, choose another `monitor`"
                + (" or save per epoch." if batch is not None else ".")
            )
        if self.monitor_op is None:
            keras_internals.set_monitor_op(self)
        current = float(logs[self.monitor])
        if self.best is not None and not self.monitor_op(current, self.best):
            return False
        self.best = current
        return True

    def _filepath(self, epoch, batch, logs):
        fields = {"epoch": epoch + 1, **logs}
        if batch is not None:
            fields.setdefault("batch", batch + 1)
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.filepath) if f]
            missing = sorted(
                {n.split(".")[0].split("[")[0] for n in names} - set(fields)
            )
            if not missing:
                return self.filepath.format(**fields)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"Cannot fill in the FourierFTCheckpoint filepath "
                f"{self.filepath!r}: {error}."
            ) from None
        raise ValueError(
            f"The FourierFTCheckpoint filepath {self.filepath!r} uses "
            f"{', '.join(map(repr, missing))}, which the "
            f"{'epoch' if batch is None else 'batch'} logs do not have: its "
            f"fields must be among {sorted(fields)} here. Validation metrics "
            "exist at epoch ends of a `fit` with validation data, `{batch}` "
            "with an integer `save_freq`."
        )
