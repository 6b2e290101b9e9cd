"""Serving many FourierFT adapters at once: one adapter per row of a batch.

Adapters trained with the same settings (seed, `n_frequency`, sampling) on
the same layers share their frequency locations, so K adapters of a layer
are a `(K, n)` table of coefficients. An `AdapterBank` keeps that table in
every adapted layer of one model; a batch names an adapter per row, and a
layer gathers each row's coefficients and runs the same FFTs, gather and
scatter as with one adapter, so a batch costs the same for any K.

Why a selection variable and not an extra model input: KerasHub task models
take their inputs from a preprocessor and `generate()` runs its own compiled
loop, neither of which passes an extra input down to the layers. The rows'
adapters live instead in a non-trainable variable of each adapted layer,
read at run time like the adapter's on/off state, so `predict`,
`jit_compile`d functions and `generate()` see a new selection (or an adapter
added to a bank with room) without being traced again.
"""

import contextlib
import os

import numpy as np
from keras import ops

from keras_fourierft import adapters
from keras_fourierft import peft
from keras_fourierft import surgery


class AdapterBank:
    """A table of FourierFT adapters in one model, chosen per batch row.

    Creating the bank adds to every adapted layer of `model` a
    non-trainable `(capacity + 1, n_frequency)` float32 table (row 0 is the
    base model, zeros) and the adapter row of each batch row; the model's
    own (trainable) coefficients are untouched and serve every call while
    no selection is in force. Bank memory is `(capacity + 1) * n * 4` bytes
    per adapted layer (`memory_bytes`). Adapters come from `.weights.h5`
    adapter files or PEFT FourierFT folders; each must have been trained on
    the model's adapted layers with its settings (same seed, `n_frequency`,
    sampling and `scaling`), which is checked before anything changes.

    `select` names an adapter (or `None`, the base model) for each row of
    the next batches; a `predict`, `generate()` or compiled call then gives
    row `i` what the model with adapter `i` alone gives (to float32
    round-off; under a bfloat16 compute policy, to its rounding). Rows past
    the selection use the base model. Turned off
    (`set_fourierft_enabled(model, False)`), every row gets the base
    model; training calls (`fit`) ignore the selection and train the
    model's own coefficients. Selecting, adding and removing adapters
    only assign variables: nothing is traced again. While a bank exists the
    layers cannot be merged; `unload()` removes it.

    Creating or unloading a bank drops `model`'s compiled functions; a model
    that holds `model` (a causal LM around a backbone with a bank) keeps its
    own: call its `compile()` so that KerasHub's `generate` is traced again.

    Args:
        model: A Keras model adapted with `enable_fourierft`, unmerged.
        capacity: Positive integer, the number of adapters the bank holds.
        max_batch_size: Positive integer, the most rows a selection may
            name (rows of larger batches past it use the base model).

    Example:

    ```python
    keras_fourierft.enable_fourierft(causal_lm, n_frequency=1000)
    bank = keras_fourierft.AdapterBank(causal_lm, capacity=64)
    bank.add("french", "french.weights.h5")
    bank.add("german", "german.weights.h5")
    bank.select(["french", "german", None])
    causal_lm.generate(["Bonjour", "Hallo", "Hello"])
    ```
    """

    def __init__(self, model, capacity=8, max_batch_size=64):
        capacity = _positive_integer("capacity", capacity)
        max_batch_size = _positive_integer("max_batch_size", max_batch_size)
        layers = surgery.fourierft_layers(model)
        if not layers:
            raise ValueError(
                f"Model {model.name!r} has no FourierFT adapters. Call "
                "`enable_fourierft` with the adapters' settings first."
            )
        for path, layer in layers.items():
            if layer._fourierft.bank is not None:
                raise ValueError(
                    f"Layer {path!r} already serves an adapter bank. Use that "
                    "bank, or `unload()` it first."
                )
            if layer.merged:
                raise ValueError(
                    f"Layer {path!r} is merged; a bank adds each row's update "
                    "to the unmerged kernel. Call `unmerge_fourierft(model)` "
                    "first."
                )
        for layer in layers.values():
            layer._create_bank(capacity, max_batch_size)
        surgery._reset_compiled_functions(model)
        self._model = model
        self._layers = layers
        self._slots = {}
        self._capacity = capacity
        self._max_batch_size = max_batch_size

    @property
    def capacity(self):
        """Integer, the number of adapters the bank can hold."""
        return self._capacity

    @property
    def max_batch_size(self):
        """Integer, the most rows a selection may name."""
        return self._max_batch_size

    @property
    def names(self):
        """The names of the adapters in the bank, in the order added."""
        return list(self._slots)

    @property
    def memory_bytes(self):
        """Integer, the bytes of the bank's coefficient tables (all layers)."""
        return sum(
            int(np.prod(layer._fourierft.bank.table.shape)) * 4
            for layer in self._live_layers().values()
        )

    def __len__(self):
        return len(self._slots)

    def __contains__(self, name):
        return name in self._slots

    def add(self, name, source, layer_map=None):
        """Adds an adapter to the bank from a file or a PEFT folder.

        The adapter is read and checked in full (its layers and settings
        against the model's adapters) before the bank changes; a mismatch
        raises a `ValueError` naming the source and the layer, and the bank
        is left as it was.

        Args:
            name: String, the name rows select the adapter by.
            source: Path of a `.weights.h5` file written by
                `save_fourierft_weights`, or of a PEFT FourierFT folder.
            layer_map: Optional dict from PEFT module path to layer path,
                for PEFT folders (see `load_peft_adapter`).
        """
        layers = self._live_layers()
        if not isinstance(name, str) or not name:
            raise ValueError(f"Adapter names are non-empty strings. Received: {name!r}")
        if name in self._slots:
            raise ValueError(
                f"The bank already holds an adapter named {name!r}. Remove it "
                "first (`bank.remove(name)`) or pick another name."
            )
        if len(self._slots) >= self._capacity:
            raise ValueError(
                f"The bank is full: it holds {self._capacity} adapters. Remove "
                "one (`bank.remove(name)`), or create the bank with a larger "
                "`capacity`."
            )
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError(
                "`source` must be the path of a `.weights.h5` adapter file or "
                f"of a PEFT folder. Received: {source!r}"
            )
        spectra = _read_spectra(self._model, source, layer_map)
        free = sorted(set(range(1, self._capacity + 1)) - set(self._slots.values()))
        slot = free[0]
        for path, layer in layers.items():
            _set_row(layer._fourierft.bank.table, slot, spectra[path])
        self._slots[name] = slot

    def remove(self, name):
        """Removes an adapter; rows that selected it must select again.

        Args:
            name: String, the name the adapter was added with.
        """
        self._slot(name)
        layers = self._live_layers()
        slot = self._slots.pop(name)
        for layer in layers.values():
            bank = layer._fourierft.bank
            _set_row(bank.table, slot, np.zeros(bank.table.shape[1], "float32"))
            selected = ops.convert_to_numpy(bank.rows)
            bank.rows.assign(np.where(selected == slot, 0, selected).astype("int32"))

    def select(self, adapters):
        """Chooses an adapter for each row of the next batches.

        Args:
            adapters: A 1-D list of adapter names, one per batch row; `None`
                selects the base model. At most `max_batch_size` rows; rows
                past the list use the base model.
        """
        layers = self._live_layers()
        rows = self._rows(adapters)
        for path, layer in layers.items():
            if layer.merged:
                raise ValueError(
                    f"Layer {path!r} is merged; unmerge before selecting "
                    "adapters per row."
                )
        for layer in layers.values():
            layer._fourierft.bank.rows.assign(rows)
            layer._fourierft.bank.active.assign(True)

    def deselect(self):
        """Ends the selection: the model's own adapter serves every row."""
        for layer in self._live_layers().values():
            layer._fourierft.bank.active.assign(False)

    @contextlib.contextmanager
    def selected(self, adapters):
        """`select(adapters)` for the `with` block, then `deselect()`.

        Args:
            adapters: As for `select`.

        Example:

        ```python
        with bank.selected(["french", None]):
            causal_lm.generate(["Bonjour", "Hello"])
        ```
        """
        self.select(adapters)
        try:
            yield self
        finally:
            self.deselect()

    def unload(self):
        """Removes the bank from the model (its adapters stay as they were)."""
        for layer in self._live_layers().values():
            layer._drop_bank()
        surgery._reset_compiled_functions(self._model)
        self._layers = {}
        self._slots = {}

    def _slot(self, name):
        if name not in self._slots:
            known = ", ".join(map(repr, self._slots)) or "none"
            raise ValueError(
                f"No adapter named {name!r} in the bank (it holds: {known}). "
                "Add it with `bank.add(name, path)`."
            )
        return self._slots[name]

    def _rows(self, adapters):
        is_list = isinstance(adapters, (list, tuple)) or (
            isinstance(adapters, np.ndarray) and adapters.ndim == 1
        )
        if not is_list:
            raise ValueError(
                "`adapters` must be a 1-D list with an adapter name (or None "
                f"for the base model) per batch row. Received: {adapters!r}"
            )
        values = list(adapters)
        if len(values) > self._max_batch_size:
            raise ValueError(
                f"{len(values)} rows selected, but the bank serves batches of "
                f"at most {self._max_batch_size} rows. Create the bank with a "
                "larger `max_batch_size`."
            )
        rows = np.zeros(self._max_batch_size, "int32")
        for index, value in enumerate(values):
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(
                    f"Row {index}: expected an adapter name (a string) or "
                    f"None, received {value!r} of type {type(value).__name__}."
                )
            rows[index] = self._slot(value)
        return rows

    def _live_layers(self):
        if not self._layers:
            raise ValueError("This adapter bank was unloaded; create a new one.")
        for path, layer in self._layers.items():
            if not surgery.is_adapted(layer) or layer._fourierft.bank is None:
                raise ValueError(
                    f"Layer {path!r} no longer serves this bank (its adapter "
                    "was unloaded). Create a new `AdapterBank`."
                )
        return self._layers


def _read_spectra(model, source, layer_map):
    """`{layer path: effective spectrum}` of an adapter, checked for `model`."""
    where = os.fspath(source)
    try:
        if os.path.isdir(where):
            entries, extra = peft._peft_entries(model, where, layer_map), []
            adapters._check_model(model, entries, extra, trainable=False)
        else:  # checked against the model while it is read
            content = adapters._read_adapter_file(where, model)
            entries, extra = content["layers"], content["extra"]
    except ValueError as error:
        raise ValueError(f"Adapter {where!r}: {error}") from None
    _check_shared(model, where, extra)
    return {entry["path"]: entry["spectrum"] for entry in entries}


def _check_shared(model, where, extra):
    """Refuses other weights unless they equal the model's (a bank shares
    every weight but the FourierFT coefficients)."""
    variables = dict(surgery.owned_variables(model))
    for path, value in extra:
        current = ops.convert_to_numpy(variables[path])
        if not np.array_equal(current, value):
            raise ValueError(
                f"Adapter {where!r} also stores weight {path!r} (e.g. a task "
                "head trained with it), which differs from the model's. The "
                "adapters of a bank share every weight but their FourierFT "
                "coefficients: train the adapters with that weight frozen, "
                "or serve this one alone with `load_fourierft_weights`."
            )


def _set_row(table, row, values):
    values = ops.convert_to_tensor(np.asarray(values, "float32")[None])
    table.assign(ops.slice_update(table.value, (row, 0), values))


def _positive_integer(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be a positive integer. Received: {value!r}")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {value}")
    return int(value)
