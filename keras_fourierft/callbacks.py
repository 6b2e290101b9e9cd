"""`FourierFTCheckpoint`: save adapter files during `fit`."""

import os
import re
import string

import keras

from keras_fourierft.adapters import save_fourierft_weights


class FourierFTCheckpoint(keras.callbacks.ModelCheckpoint):
    """Saves the FourierFT adapter file during `fit`, like `ModelCheckpoint`.

    A `keras.callbacks.ModelCheckpoint` that writes adapter files
    (`save_fourierft_weights`: kilobytes, written atomically, so an
    interrupted save keeps the previous file) instead of the model.
    Everything else is `ModelCheckpoint`'s: `save_freq` (every epoch or
    every N batches), `save_best_only` with `mode` and
    `initial_value_threshold`, and `filepath` fields such as `{epoch:02d}`,
    `{batch}` and `{val_loss:.3f}`. A field the logs do not have raises a
    `ValueError` naming it. Works with `EarlyStopping`, `ReduceLROnPlateau`
    and `BackupAndRestore` (which restores the model; the best value seen so
    far starts afresh after a restart).

    Args:
        filepath: Path ending in `.weights.h5`, optionally with format
            fields.
        monitor: Metric name to compare for `save_best_only`.
        save_best_only: If True, save only when `monitor` improves. The
            logs must then hold `monitor` whenever a save is due (at batch
            level they hold no validation metrics).
        mode: `"auto"`, `"min"` or `"max"`; `"auto"` minimises losses and
            follows the direction of the compiled metric named by
            `monitor` (e.g. maximises `val_accuracy`).
        include_trainable_weights: Also store other trainable weights (e.g.
            the task head), see `save_fourierft_weights`.
        initial_value_threshold: Optional value `monitor` has to beat first.
        verbose: 0 or 1; 1 prints a line per save.
        save_freq: `"epoch"` or a positive integer: save after every epoch,
            or after every this many batches.

    Example:

    ```python
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        callbacks=[FourierFTCheckpoint("best.weights.h5", save_best_only=True)],
    )
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
                f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}"
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

    def _save_model(self, epoch, batch, logs):
        # ModelCheckpoint's, writing the adapter file instead of the model.
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        if self.save_best_only:
            self._check_monitor(logs, batch)
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        folder = os.path.dirname(filepath)
        if folder:
            os.makedirs(folder, exist_ok=True)
        save_fourierft_weights(
            self.model,
            filepath,
            include_trainable_weights=self.include_trainable_weights,
        )
        self.last_saved = filepath
        if self.verbose > 0:
            when = f"Epoch {epoch + 1}"
            if batch is not None:
                when += f", batch {batch + 1}"
            print(f"\n{when}: FourierFT adapter saved to {filepath}")

    def _set_monitor_op(self):
        # Only `save_best_only` compares values; without it, a `monitor` whose
        # direction Keras cannot tell is no error.
        if self.save_best_only:
            super()._set_monitor_op()

    def _check_monitor(self, logs, batch):
        if self.monitor not in logs:
            when = "epoch" if batch is None else "batch"
            raise ValueError(
                f"FourierFTCheckpoint monitors {self.monitor!r}, which the "
                f"{when} logs do not have (available: {sorted(logs)}). Pass "
                "validation data, choose another `monitor`"
                + (" or save per epoch." if batch is not None else ".")
            )
        if self.monitor_op is None:
            # ModelCheckpoint sets it up at the first epoch end only.
            self._set_monitor_op()

    def _get_file_path(self, epoch, batch, logs):
        available = {"epoch", *logs} | ({"batch"} if batch is not None else set())
        try:
            fields = {
                re.split(r"[.\[]", name, maxsplit=1)[0]
                for _, name, _, _ in string.Formatter().parse(self.filepath)
                if name is not None
            }
            missing = sorted(fields - available)
            if not missing:
                return super()._get_file_path(epoch, batch, logs)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"Cannot fill in the FourierFTCheckpoint filepath "
                f"{self.filepath!r}: {error}."
            ) from None
        when = "epoch" if batch is None else "batch"
        raise ValueError(
            f"The FourierFTCheckpoint filepath {self.filepath!r} uses "
            f"{', '.join(map(repr, missing))}, which the {when} logs do not "
            f"have: its fields must be among {sorted(available)} here. "
            "Validation metrics exist at epoch ends of a `fit` with validation "
            "data, `{batch}` with an integer `save_freq`."
        )
