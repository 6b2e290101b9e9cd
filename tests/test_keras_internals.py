"""The private Keras names the package relies on exist in the installed Keras."""

import keras
import numpy as np

from keras_fourierft import keras_internals


def test_tracker_unlock_adds_variables_to_a_built_layer():
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    with keras_internals.unlocked_tracker(layer):
        layer.extra = layer.add_weight(name="extra", shape=(4,))
    assert [v.name for v in layer.weights] == ["kernel", "bias", "extra"]


def test_child_layers_cover_lists_dicts_and_tuples():
    class Holder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.in_list = [keras.layers.Dense(1)]
            self.in_dict = {"a": keras.layers.Dense(1)}
            self.in_tuple = (keras.layers.Dense(1),)

    holder = Holder()
    children = keras_internals.child_layers(holder)
    expected = [holder.in_list[0], holder.in_dict["a"], holder.in_tuple[0]]
    assert sorted(map(id, children)) == sorted(map(id, expected))


def test_set_layer_class_rewraps_quantize():
    class Sub(keras.layers.Dense):
        def quantize(self, mode=None, type_check=True, config=None):
            super().quantize(mode, type_check=False, config=config)

    layer = keras.layers.Dense(4)
    layer.build((None, 8))
    keras_internals.set_layer_class(layer, Sub)
    layer.quantize("int8")
    assert layer.quantization_mode == "int8"
    assert layer(np.ones((1, 8), "float32")).shape == (1, 4)


def test_straight_through_logits_follow_the_layer_through_deepcopy():
    import copy

    layer = keras.layers.ReversibleEmbedding(16, 4)
    layer.build()
    layer.quantize("int8")
    keras_internals.give_logits_an_input_gradient(layer)
    twin = copy.deepcopy(layer)
    assert twin._int8_call.__self__ is twin
    twin._embeddings.assign(np.zeros((16, 4), "int8"))
    x = np.ones((2, 4), "float32")
    assert np.abs(keras.ops.convert_to_numpy(layer(x, reverse=True))).max() > 0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin(x, reverse=True)), 0)
    # Lookups (not reversed) are Keras's own.
    ids = np.array([[1, 2]])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(ids)),
        keras.ops.convert_to_numpy(type(layer)._int8_call(layer, ids)),
    )


def test_saved_object_paths_are_where_keras_saves_assets(tmp_path):
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
    assert len(seen) == 3
    for name, dir_path in seen.items():
        (path,) = [p for p, obj in paths.items() if getattr(obj, "name", None) == name]
        assert dir_path.replace("\\", "/").endswith("/assets/" + path), (path, dir_path)
    assert paths[""] is model


def test_set_monitor_op_follows_the_compiled_metric():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse", metrics=["accuracy"])
    model.evaluate(np.ones((2, 2)), np.ones((2, 1)), verbose=0)
    callback = keras.callbacks.ModelCheckpoint("m.keras", monitor="val_accuracy")
    callback.set_model(model)
    keras_internals.set_monitor_op(callback)
    assert bool(callback.monitor_op(2.0, 1.0))
