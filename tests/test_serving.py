"""Adapter banks: a different FourierFT adapter per row of one batch.

The reference for every row is the model with that row's adapter loaded
alone (`load_fourierft_weights`), or with no adapter for the base rows.
"""

import pathlib

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras import ops
from keras.src import testing

import keras_fourierft
from tests import models

N = 30


def _model(init_seed=0, **settings):
    keras.utils.set_random_seed(init_seed)
    inputs = keras.Input((5, 16))
    x = keras.layers.Dense(24, name="a")(inputs)
    x = keras.layers.EinsumDense("btd,dnh->btnh", (5, 2, 8), name="b")(x)
    model = keras.Model(inputs, keras.layers.Flatten()(x))
    settings = {"n_frequency": N, "scaling": 40.0, **settings}
    keras_fourierft.enable_fourierft(model, target_layer_names=["a", "b"], **settings)
    return model


def _x(batch=4):
    return np.random.default_rng(1).normal(size=(batch, 5, 16)).astype("float32")


def _save_adapters(model, folder, count, start=10):
    """`count` adapter files with random spectra; the model keeps the last."""
    files = []
    for k in range(count):
        for layer in keras_fourierft.fourierft_layers(model).values():
            rng = np.random.default_rng(start + k)
            layer.set_spectrum(rng.normal(size=layer.n_frequency))
        path = str(folder / f"adapter_{k}.weights.h5")
        keras_fourierft.save_fourierft_weights(model, path)
        files.append(path)
    return files


def _alone(model, files, x, call=None):
    """Outputs with each adapter loaded alone, then with none (the base)."""
    call = call or (lambda: ops.convert_to_numpy(model(x)))
    outputs = []
    for path in files:
        keras_fourierft.load_fourierft_weights(model, path)
        outputs.append(call())
    keras_fourierft.set_fourierft_enabled(model, False)
    outputs.append(call())
    keras_fourierft.set_fourierft_enabled(model, True)
    return outputs


def _assert_rows(test, got, references, choice):
    scale = max(np.abs(r).max() for r in references)
    for row, k in enumerate(choice):
        test.assertAllClose(
            got[row], references[k][row], atol=1e-5 * scale, rtol=0, msg=f"row {row}"
        )


def _tables(bank_model):
    return {
        path: ops.convert_to_numpy(layer._fourierft.bank.table).copy()
        for path, layer in keras_fourierft.fourierft_layers(bank_model).items()
    }


class AdapterBankTest(testing.TestCase):
    @parameterized.named_parameters(
        ("auto", "auto"), ("dense", "dense"), ("activation", "activation")
    )
    def test_each_row_equals_its_adapter_alone(self, compute_path):
        model = _model(compute_path=compute_path)
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 3)
        x = _x()
        references = _alone(model, files, x)
        base = len(files)
        # The adapters change the output a lot, so a wrong row cannot pass.
        self.assertGreater(np.abs(references[0] - references[1]).max(), 1.0)
        self.assertGreater(np.abs(references[0] - references[base]).max(), 1.0)
        bank = keras_fourierft.AdapterBank(model, capacity=4, max_batch_size=8)
        for k, path in enumerate(files):
            bank.add(f"a{k}", path)
        bank.select(["a1", None, "a0", "a2"])
        _assert_rows(self, ops.convert_to_numpy(model(x)), references, [1, base, 0, 2])
        predicted = model.predict(x, verbose=0, batch_size=4)
        _assert_rows(self, predicted, references, [1, base, 0, 2])
        # Rows past the selection use the base model.
        bank.select(["a2", "a2"])
        _assert_rows(self, model.predict(x, verbose=0), references, [2, 2, base, base])
        # Deselected, the model's own adapter (the last loaded) serves again.
        own = ops.convert_to_numpy(model(x))
        bank.deselect()
        self.assertAllClose(model(x), references[2], atol=1e-5, rtol=1e-5)
        self.assertFalse(np.allclose(own, references[2], atol=1e-3))

    def test_compiled_predict_follows_adds_and_selections(self):
        model = _model()
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 3)
        x = _x()
        references = _alone(model, files, x)
        jit = keras.backend.backend() != "torch"
        model.compile(jit_compile=jit)
        bank = keras_fourierft.AdapterBank(model, capacity=2, max_batch_size=4)
        bank.add("a0", files[0])
        bank.select(["a0", "a0", None, "a0"])
        _assert_rows(self, model.predict(x, verbose=0), references, [0, 0, 3, 0])
        function = model.predict_function
        bank.add("a1", files[1])
        bank.select(["a1", "a0", "a1", None])
        _assert_rows(self, model.predict(x, verbose=0), references, [1, 0, 1, 3])
        bank.remove("a0")
        bank.add("a2", files[2])  # reuses the freed row of the table
        bank.select(["a2", "a1", "a2", "a1"])
        _assert_rows(self, model.predict(x, verbose=0), references, [2, 1, 2, 1])
        self.assertIs(model.predict_function, function)

    def test_removing_an_adapter_sends_its_rows_to_the_base(self):
        model = _model()
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 2)
        x = _x()
        references = _alone(model, files, x)
        bank = keras_fourierft.AdapterBank(model, capacity=2)
        bank.add("a0", files[0])
        bank.add("a1", files[1])
        bank.select(["a0", "a1", "a0", "a1"])
        bank.remove("a0")
        self.assertEqual(bank.names, ["a1"])
        _assert_rows(self, model.predict(x, verbose=0), references, [2, 1, 2, 1])

    def test_text_classifier_rows(self):
        model = models.bert_classifier(dropout=0.0)
        keras_fourierft.enable_fourierft(model, n_frequency=20, scaling=3000.0)
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 2)
        x = models.bert_inputs(batch=3)
        references = _alone(model, files, x)
        self.assertGreater(np.abs(references[0] - references[1]).max(), 1e-3)
        bank = keras_fourierft.AdapterBank(model, capacity=2, max_batch_size=3)
        bank.add("a0", files[0])
        bank.add("a1", files[1])
        bank.select([None, "a1", "a0"])
        _assert_rows(self, model.predict(x, verbose=0), references, [2, 1, 0])

    def test_int8_base_rows(self):
        model = _model()
        model.quantize("int8")
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 2)
        x = _x(3)
        references = _alone(model, files, x)
        self.assertGreater(np.abs(references[0] - references[1]).max(), 1.0)
        bank = keras_fourierft.AdapterBank(model, capacity=2)
        bank.add("a0", files[0])
        bank.add("a1", files[1])
        bank.select(["a1", "a0", None])
        _assert_rows(self, model.predict(x, verbose=0), references, [1, 0, 2])

    def test_peft_folder_source(self):
        model = _causal_lm("llama")
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 1)
        folder = pathlib.Path(self.get_temp_dir()) / "peft"
        keras_fourierft.save_peft_adapter(model, folder)
        prompt = _prompt(2)
        references = _alone(
            model, files, prompt, lambda: ops.convert_to_numpy(model(prompt))
        )
        bank = keras_fourierft.AdapterBank(model, capacity=2, max_batch_size=2)
        bank.add("peft", folder)
        bank.select([None, "peft"])
        _assert_rows(self, ops.convert_to_numpy(model(prompt)), references, [1, 0])

    def test_turned_off_every_row_gets_the_base(self):
        model = _model()
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 1)
        x = _x(2)
        references = _alone(model, files, x)
        bank = keras_fourierft.AdapterBank(model, capacity=1)
        bank.add("a0", files[0])
        bank.select(["a0", "a0"])
        predicted = model.predict(x, verbose=0)
        _assert_rows(self, predicted, references, [0, 0])
        keras_fourierft.set_fourierft_enabled(model, False)
        _assert_rows(self, model.predict(x, verbose=0), references, [1, 1])
        keras_fourierft.set_fourierft_enabled(model, True)
        _assert_rows(self, model.predict(x, verbose=0), references, [0, 0])

    def test_training_ignores_the_selection(self):
        def trained(with_bank):
            model = _model()
            if with_bank:
                bank = keras_fourierft.AdapterBank(model, capacity=1)
                bank.add("a0", files[0])
                bank.select(["a0"] * 4)
            model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
            x = _x()
            model.fit(x, np.zeros((4, 80)), batch_size=4, epochs=2, verbose=0)
            layers = keras_fourierft.fourierft_layers(model).values()
            return [ops.convert_to_numpy(layer.coefficients) for layer in layers]

        files = _save_adapters(_model(), pathlib.Path(self.get_temp_dir()), 1)
        plain, banked = trained(False), trained(True)
        self.assertGreater(np.abs(plain[0]).max(), 0)  # it did train
        for a, b in zip(plain, banked, strict=True):
            self.assertAllClose(a, b, atol=1e-6, rtol=1e-5)

    def test_memory_is_reported(self):
        model = _model()
        bank = keras_fourierft.AdapterBank(model, capacity=7)
        # Two adapted layers, 8 table rows (the base's included) of N floats.
        self.assertEqual(bank.memory_bytes, 2 * 8 * N * 4)
        self.assertEqual((bank.capacity, len(bank)), (7, 0))

    def test_unload_restores_the_model(self):
        model = _model()
        x = _x()
        files = _save_adapters(model, pathlib.Path(self.get_temp_dir()), 1)
        before = [v.path for v in model.weights]
        expected = ops.convert_to_numpy(model(x))
        bank = keras_fourierft.AdapterBank(model, capacity=2)
        self.assertLen(model.weights, len(before) + 6)
        bank.add("a0", files[0])
        bank.select(["a0"])
        bank.unload()
        self.assertEqual([v.path for v in model.weights], before)
        self.assertAllClose(model(x), expected, atol=0, rtol=0)
        keras_fourierft.merge_fourierft(model)  # allowed again
        with self.assertRaisesRegex(ValueError, "unloaded"):
            bank.select(["a0"])
        # Unloading the adapters drops a bank with them.
        keras_fourierft.unmerge_fourierft(model)
        keras_fourierft.AdapterBank(model, capacity=2)
        keras_fourierft.unload_fourierft(model)
        self.assertFalse([v for v in model.weights if "fourierft" in v.path])


class AdapterBankErrorsTest(testing.TestCase):
    def setUp(self):
        super().setUp()
        self.model = _model()
        self.files = _save_adapters(self.model, pathlib.Path(self.get_temp_dir()), 2)
        self.bank = keras_fourierft.AdapterBank(
            self.model, capacity=2, max_batch_size=4
        )
        self.bank.add("a0", self.files[0])
        self.bank.select(["a0", None])
        self.x = _x()
        self.before = ops.convert_to_numpy(self.model(self.x))
        self.tables = _tables(self.model)

    def assertUntouched(self):
        self.assertEqual(self.bank.names, ["a0"])
        self.assertAllClose(self.model(self.x), self.before, atol=0, rtol=0)
        for path, table in _tables(self.model).items():
            self.assertAllClose(table, self.tables[path], atol=0, rtol=0)

    @parameterized.named_parameters(
        ("unknown", ["a9"], "No adapter named 'a9'.*holds: 'a0'"),
        ("string", "a0", "1-D list"),
        ("number", 3, "1-D list"),
        ("dict", {"a0": 1}, "1-D list"),
        ("set", {"a0"}, "1-D list"),
        ("matrix", np.array([["a0"]]), "1-D list"),
        ("nested", [["a0"]], "Row 0: expected an adapter name"),
        ("integer_ids", [1, 0], "Row 0: expected an adapter name"),
        ("too_many_rows", ["a0"] * 5, "at most 4 rows"),
    )
    def test_bad_selection(self, adapters, message):
        with self.assertRaisesRegex(ValueError, message):
            self.bank.select(adapters)
        self.assertUntouched()

    def test_bad_adds(self):
        with self.assertRaisesRegex(ValueError, "already holds an adapter named"):
            self.bank.add("a0", self.files[1])
        with self.assertRaisesRegex(ValueError, "non-empty strings"):
            self.bank.add("", self.files[1])
        with self.assertRaisesRegex(ValueError, "`source` must be the path"):
            self.bank.add("number", 5)
        with self.assertRaisesRegex(FileNotFoundError, "No adapter file"):
            missing = pathlib.Path(self.get_temp_dir()) / "no.weights.h5"
            self.bank.add("missing", missing)
        self.bank.add("a1", self.files[1])
        with self.assertRaisesRegex(ValueError, "The bank is full.*2 adapters"):
            self.bank.add("a2", self.files[0])
        self.bank.remove("a1")
        with self.assertRaisesRegex(ValueError, "No adapter named 'a1'"):
            self.bank.remove("a1")
        self.assertUntouched()

    @parameterized.named_parameters(
        ("seed", {"seed": 7}, "seed=7"),
        ("n_frequency", {"n_frequency": N + 1}, "n_frequency"),
        ("scaling", {"scaling": 3.0}, "scaling"),
    )
    def test_adapter_with_other_locations(self, settings, message):
        other = _model(**settings)
        path = _save_adapters(other, pathlib.Path(self.get_temp_dir()), 1, start=50)[0]
        pattern = f"Adapter '{path}': Layer 'a'.*{message}"
        with self.assertRaisesRegex(ValueError, pattern):
            self.bank.add("other", path)
        self.assertUntouched()

    def test_adapter_of_other_layers(self):
        keras.utils.set_random_seed(0)
        other = _model()
        keras_fourierft.unload_fourierft(other)
        keras_fourierft.enable_fourierft(
            other, target_layer_names=["a"], n_frequency=N, scaling=40.0
        )
        path = _save_adapters(other, pathlib.Path(self.get_temp_dir()), 1, start=60)[0]
        with self.assertRaisesRegex(ValueError, "1 adapted layers but model"):
            self.bank.add("other", path)
        self.assertUntouched()

    def test_adapter_with_its_own_head(self):
        model = _model()
        outputs = keras.layers.Dense(2, name="head")(model.output)
        head = keras.Model(model.input, outputs)
        folder = pathlib.Path(self.get_temp_dir())
        own = str(folder / "head.weights.h5")
        keras_fourierft.save_fourierft_weights(
            head, own, include_trainable_weights=True
        )
        bank = keras_fourierft.AdapterBank(head, capacity=2)
        bank.add("same_head", own)  # the head equals the model's: shared
        head.layers[-1].kernel.assign(head.layers[-1].kernel + 1.0)
        with self.assertRaisesRegex(ValueError, "also stores weight.*head"):
            bank.add("other_head", own)
        self.assertEqual(bank.names, ["same_head"])

    def test_rows_past_max_batch_size_use_the_base(self):
        x = _x(7)
        self.bank.deselect()
        references = _alone(self.model, self.files[:1], x)
        self.bank.select(["a0", None, "a0", "a0"])
        expected = [0, 1, 0, 0, 1, 1, 1]
        _assert_rows(self, ops.convert_to_numpy(self.model(x)), references, expected)
        # `predict` in batches of 7, then 3 and 7 again (a traced batch axis).
        for batch in (7, 3, 7):
            out = self.model.predict(x[:batch], batch_size=batch, verbose=0)
            _assert_rows(self, out, references, expected[:batch])

    def test_merge_and_bank_exclude_each_other(self):
        with self.assertRaisesRegex(ValueError, "serves an adapter bank"):
            keras_fourierft.merge_fourierft(self.model)
        self.assertUntouched()
        with self.assertRaisesRegex(ValueError, "already serves an adapter bank"):
            keras_fourierft.AdapterBank(self.model)
        merged = _model()
        keras_fourierft.merge_fourierft(merged)
        with self.assertRaisesRegex(ValueError, "is merged"):
            keras_fourierft.AdapterBank(merged)
        self.assertFalse([v for v in merged.weights if "bank" in v.path])

    @parameterized.named_parameters(
        ("zero", {"capacity": 0}, "capacity"),
        ("text", {"capacity": "8"}, "capacity"),
        ("boolean", {"max_batch_size": True}, "max_batch_size"),
    )
    def test_bad_sizes(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            keras_fourierft.AdapterBank(_model(), **kwargs)

    def test_model_without_adapters(self):
        with self.assertRaisesRegex(ValueError, "no FourierFT adapters"):
            keras_fourierft.AdapterBank(models.sequential())


def _causal_lm(family):
    model = models.causal_lm(family)
    keras_fourierft.enable_fourierft(model, n_frequency=40, scaling=3000.0)
    model.compile(sampler="greedy")
    return model


def _prompt(batch):
    starts = [[5, 9, 12], [7, 3, 30], [11, 2, 40]][:batch]
    token_ids = np.zeros((batch, 10), "int32")
    token_ids[:, :3] = starts
    padding_mask = np.zeros((batch, 10), "bool")
    padding_mask[:, :3] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_generate_serves_a_mixed_batch(family, tmp_path):
    model = _causal_lm(family)
    files = _save_adapters(model, tmp_path, 2)
    prompt = _prompt(3)

    def generate():
        # `generate` writes into numpy inputs: give it copies.
        inputs = {name: value.copy() for name, value in prompt.items()}
        return np.asarray(model.generate(inputs, stop_token_ids=None)["token_ids"])

    references = _alone(model, files, prompt, generate)
    assert not np.array_equal(references[0], references[1])
    assert not np.array_equal(references[0], references[2])
    bank = keras_fourierft.AdapterBank(model, capacity=2, max_batch_size=3)
    bank.add("a0", files[0])
    bank.add("a1", files[1])
    with bank.selected(["a1", None, "a0"]):
        mixed = generate()
        function = model.generate_function
        np.testing.assert_array_equal(mixed[0], references[1][0])
        np.testing.assert_array_equal(mixed[1], references[2][1])
        np.testing.assert_array_equal(mixed[2], references[0][2])
        bank.select(["a0", "a1", "a1"])
        mixed = generate()
        np.testing.assert_array_equal(mixed[0], references[0][0])
        np.testing.assert_array_equal(mixed[1], references[1][1])
        np.testing.assert_array_equal(mixed[2], references[1][2])
    assert model.generate_function is function
    # Deselected: the model's own adapter (the last loaded) on every row.
    np.testing.assert_array_equal(generate(), references[1])
