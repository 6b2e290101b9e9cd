"""`FourierFTCheckpoint`: save adapter files during `fit`."""

import keras
import numpy as np

from keras_fourierft.adapters import save_fourierft_weights


class FourierFTCheckpoint(keras.callbacks.Callback):
    """Saves the FourierFT adapter file during `fit`, like `ModelCheckpoint`.

    Only the adapter (kilobytes) is written, atomically, so an interrupted
    save keeps the previous file. `filepath` may hold `ModelCheckpoint`-style
    fields such as `{epoch:02d}` and `{val_loss:.3f}`. Works with
    `EarlyStopping`, `ReduceLROnPlateau` and `BackupAndRestore` (which
    restores the model; the best value seen so far starts afresh after a
    restart).

    Args:
        filepath: Path ending in `.weights.h5`, optionally with format
            fields.
        monitor: Metric name to compare for `save_best_only`.
        save_best_only: If True, save only when `monitor` improves.
        mode: `"auto"`, `"min"` or `"max"`; `"auto"` maximises metrics
            whose name contains `acc`, `auc`, `precision`, `recall` or
            `f1`, and minimises others.
        include_trainable_weights: Also store other trainable weights (e.g.
            the task head), see `save_fourierft_weights`.
        initial_value_threshold: Optional value `monitor` has to beat first.
        verbose: 0 or 1; 1 prints a line per save.

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
    ):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}"
            )
        if not str(filepath).endswith(".weights.h5"):
            raise ValueError(
                "FourierFTCheckpoint writes adapter files, whose names end in "
                f"'.weights.h5'. Received: filepath={filepath!r}"
            )
        self.filepath = str(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.include_trainable_weights = include_trainable_weights
        self.verbose = verbose
        if mode == "auto":
            maximise = any(
                key in monitor for key in ("acc", "auc", "precision", "recall", "f1")
            )
            mode = "max" if maximise else "min"
        self._better = np.greater if mode == "max" else np.less
        self.best = initial_value_threshold
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                raise ValueError(
                    f"FourierFTCheckpoint monitors {self.monitor!r}, which the "
                    f"epoch logs do not have (available: {sorted(logs)}). Pass "
                    "validation data or choose another `monitor`."
                )
            if self.best is not None and not self._better(current, self.best):
                return
            self.best = float(current)
        path = self.filepath.format(epoch=epoch + 1, **logs)
        save_fourierft_weights(
            self.model,
            path,
            include_trainable_weights=self.include_trainable_weights,
        )
        self.last_saved = path
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: FourierFT adapter saved to {path}")
