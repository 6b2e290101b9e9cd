"""The private Keras names the package relies on exist in the installed Keras."""

import pathlib

import h5py
import keras
import numpy as np
import pytest
from keras.src import testing

from keras_fourierft import keras_internals


class KerasInternalsTest(testing.TestCase):
    def test_tracker_unlock_adds_variables_to_a_built_layer(self):
        layer = keras.layers.Dense(3)
        layer.build((None, 2))
        with keras_internals.unlocked_tracker(layer):
            layer.extra = layer.add_weight(name="extra", shape=(4,))
        self.assertEqual([v.name for v in layer.weights], ["kernel", "bias", "extra"])

    def test_child_layers_cover_lists_dicts_and_tuples(self):
        class Holder(keras.layers.Layer):
            def __init__(self):
                super().__init__()
                self.in_list = [keras.layers.Dense(1)]
                self.in_dict = {"a": keras.layers.Dense(1)}
                self.in_tuple = (keras.layers.Dense(1),)

        holder = Holder()
        children = keras_internals.child_layers(holder)
        expected = [holder.in_list[0], holder.in_dict["a"], holder.in_tuple[0]]
        self.assertEqual(sorted(map(id, children)), sorted(map(id, expected)))

    def test_set_layer_class_rewraps_quantize(self):
        class Sub(keras.layers.Dense):
            def quantize(self, mode=None, type_check=True, config=None):
                super().quantize(mode, type_check=False, config=config)

        layer = keras.layers.Dense(4)
        layer.build((None, 8))
        keras_internals.set_layer_class(layer, Sub)
        layer.quantize("int8")
        self.assertEqual(layer.quantization_mode, "int8")
        self.assertEqual(layer(np.ones((1, 8), "float32")).shape, (1, 4))

    def test_straight_through_logits_follow_the_layer_through_deepcopy(self):
        import copy

        layer = keras.layers.ReversibleEmbedding(16, 4)
        layer.build()
        layer.quantize("int8")
        keras_internals.give_logits_an_input_gradient(layer)
        twin = copy.deepcopy(layer)
        self.assertIs(twin._int8_call.__self__, twin)
        twin._embeddings.assign(np.zeros((16, 4), "int8"))
        x = np.ones((2, 4), "float32")
        self.assertGreater(
            np.abs(keras.ops.convert_to_numpy(layer(x, reverse=True))).max(), 0
        )
        self.assertAllEqual(keras.ops.convert_to_numpy(twin(x, reverse=True)), 0)
        # Lookups (not reversed) are Keras's own.
        ids = np.array([[1, 2]])
        self.assertAllEqual(
            keras.ops.convert_to_numpy(layer(ids)),
            keras.ops.convert_to_numpy(type(layer)._int8_call(layer, ids)),
        )

    def test_saved_object_paths_are_where_keras_saves_assets(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        seen = {}

        class Recorder(keras.layers.Layer):
            def save_assets(self, dir_path):
                seen[self.name] = dir_path

        class Block(keras.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.inner = Recorder(name="inner")
                self.items = [Recorder(name="first"), {"k": Recorder(name="second")}]

            def call(self, x):
                return x

        inputs = keras.Input((2,))
        block = Block(name="block")
        model = keras.Model(inputs, block(keras.layers.Dense(2)(inputs)))
        model.save(str(tmp_path / "m.keras"))
        paths = keras_internals.saved_object_paths(model)
        self.assertLen(seen, 3)
        for name, dir_path in seen.items():
            (path,) = [
                p for p, obj in paths.items() if getattr(obj, "name", None) == name
            ]
            self.assertTrue(
                dir_path.replace("\\", "/").endswith("/assets/" + path),
                msg=(path, dir_path),
            )
        self.assertIs(paths[""], model)

    def test_set_monitor_op_follows_the_compiled_metric(self):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(loss="mse", metrics=["accuracy"])
        model.evaluate(np.ones((2, 2)), np.ones((2, 1)), verbose=0)
        callback = keras.callbacks.ModelCheckpoint("m.keras", monitor="val_accuracy")
        callback.set_model(model)
        keras_internals.set_monitor_op(callback)
        self.assertTrue(bool(callback.monitor_op(2.0, 1.0)))

    def test_kernel_variable_is_the_stored_kernel(self):
        layer = keras.layers.Dense(3)
        layer.build((None, 2))
        self.assertIs(keras_internals.kernel_variable(layer), layer.kernel)
        layer.quantize("int8")
        kernel = keras_internals.kernel_variable(layer)
        self.assertEqual(kernel.dtype, "int8")
        self.assertEqual(tuple(kernel.shape), (2, 3))

    def test_was_called_turns_true_on_the_first_call(self):
        layer = keras.layers.Dense(3)
        layer.build((None, 2))
        self.assertFalse(keras_internals.was_called(layer))
        layer(np.ones((1, 2), "float32"))
        self.assertTrue(keras_internals.was_called(layer))

    def test_counts_own_variables_skips_keras_entry_count_check(self):
        class Lenient(keras_internals.CountsOwnVariables, keras.layers.Dense):
            pass

        layer = Lenient(3)
        layer.build((None, 2))
        kernel = np.arange(6, dtype="float32").reshape(2, 3)
        # Keras's own check refuses a store with an extra entry.
        plain = keras.layers.Dense(3)
        plain.build((None, 2))
        store = {"0": kernel, "1": np.zeros(3, "float32"), "2": np.zeros(1)}
        with pytest.raises(ValueError, match="expected 2 variables"):
            plain.load_own_variables(store)
        layer.load_own_variables(store)
        self.assertAllEqual(np.asarray(layer.kernel), kernel)

    def test_shows_adapted_name_only_to_the_summary(self):
        tmp_path = pathlib.Path(self.get_temp_dir())

        class Shown(keras.layers.Dense, metaclass=keras_internals.ShowsAdaptedName):
            display_base = "Dense"

        self.assertEqual(Shown.__name__, "Dense")
        model = keras.Sequential([keras.Input((2,)), Shown(3), keras.layers.Dense(1)])
        lines = []
        model.summary(print_fn=lambda line, **kwargs: lines.append(line))
        self.assertIn("Shown", "\n".join(lines))
        path = str(tmp_path / "shown.weights.h5")
        model.save_weights(path)
        with h5py.File(path) as file:
            # Keras keys list-held layers by class name: the base name is used.
            self.assertEqual(sorted(file["layers"]), ["dense", "dense_1"])

    def test_lists_its_layers_is_true_for_plain_containers_only(self):
        import keras_hub

        inputs = keras.Input((3,))
        functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        sequential = keras.Sequential([keras.layers.Dense(2)])
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=10,
            num_layers=1,
            num_heads=1,
            hidden_dim=4,
            intermediate_dim=4,
            max_sequence_length=8,
        )
        self.assertTrue(keras_internals.lists_its_layers(functional))
        self.assertTrue(keras_internals.lists_its_layers(sequential))
        self.assertFalse(keras_internals.lists_its_layers(backbone))
        self.assertFalse(
            keras_internals.lists_its_layers(keras.layers.MultiHeadAttention(1, 2))
        )
