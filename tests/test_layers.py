import os
import pathlib
import threading

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras import ops
from keras.src import testing
from keras.src.testing.test_utils import named_product

from keras_fourierft import FourierDense
from keras_fourierft import FourierEinsumDense
from keras_fourierft import enable_fourierft
from keras_fourierft import frequency_locations
from keras_fourierft import unload_fourierft
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.spectral import kernel_view
from tests.helpers import gradient
from tests.helpers import peft_cases
from tests.helpers import peft_layers


def _dense(units, in_features, seed=0, **kwargs):
    layer = keras.layers.Dense(units, **kwargs)
    layer.build((None, in_features))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    if layer.bias is not None:
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    return layer


def _adapt(layer, **settings):
    """Enables FourierFT on one built layer; returns the layer."""
    enable_fourierft(layer, **settings)
    return layer


def _einsum(equation, output_shape, input_shape, bias_axes=None, seed=0):
    layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes)
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    return layer


def _numpy_delta(spectrum, locations, in_features, out_features, scaling):
    spectrum_matrix = np.zeros((out_features, in_features), dtype=np.complex128)
    spectrum_matrix[locations[0], locations[1]] = spectrum
    return (scaling * np.fft.ifft2(spectrum_matrix).real).T


COMPUTE = ["dense", "activation"]


def _einsum_case(name, equation, output_shape, input_shape, view, from_2d):
    return {
        "testcase_name": name,
        "equation": equation,
        "output_shape": output_shape,
        "input_shape": input_shape,
        "view": view,
        "from_2d": from_2d,
    }


# (name, equation, output_shape, input_shape, expected in x out,
# kernel_from_2d): the last item builds the kernel from its 2-D (input,
# output) view by hand, independently of `kernel_view`, for the reference
# below.
EINSUM_CASES = [
    # BERT/ViT query: kernel (hidden, heads, head_dim)
    _einsum_case(
        "bert_query",
        "abc,cde->abde",
        (None, 3, 4),
        (2, 5, 16),
        (16, 12),
        lambda m: m.reshape(16, 3, 4),
    ),
    # Gemma query: kernel (heads, hidden, head_dim)
    _einsum_case(
        "gemma_query",
        "btd,ndh->btnh",
        (None, 3, 4),
        (2, 5, 16),
        (16, 12),
        lambda m: m.reshape(16, 3, 4).transpose(1, 0, 2),
    ),
    # attention output: kernel (heads, head_dim, hidden)
    _einsum_case(
        "attention_output",
        "abcd,cde->abe",
        (None, 16),
        (2, 5, 3, 4),
        (12, 16),
        lambda m: m.reshape(3, 4, 16),
    ),
    # Gemma output: kernel (heads, head_dim, hidden)
    _einsum_case(
        "gemma_output",
        "btnh,nhd->btd",
        (None, 16),
        (2, 5, 3, 4),
        (12, 16),
        lambda m: m.reshape(3, 4, 16),
    ),
    # input axes (heads, head_dim), kernel axes (head_dim, heads, out)
    _einsum_case(
        "heads_before_head_dim",
        "bthd,dhe->bte",
        (None, 8),
        (2, 5, 3, 4),
        (12, 8),
        lambda m: m.reshape(4, 3, 8),
    ),
    _einsum_case("ellipsis", "...b,bc->...c", (10,), (2, 3, 7), (7, 10), lambda m: m),
]


def _finite_difference(loss, variable, eps=1e-2):
    """Central differences of `loss()` with respect to every entry of a variable."""
    start = ops.convert_to_numpy(variable).astype(np.float64)
    numeric = np.zeros_like(start)
    for index in np.ndindex(start.shape):
        for sign in (1, -1):
            shifted = start.copy()
            shifted[index] += sign * eps
            variable.assign(shifted.astype("float32"))
            numeric[index] += sign * float(ops.convert_to_numpy(loss())) / (2 * eps)
    variable.assign(start.astype("float32"))
    return numeric


def _small_model():
    inputs = keras.Input((6,))
    x = FourierDense(8, activation="relu", n_frequency=10)(inputs)
    x = FourierEinsumDense("ab,bc->ac", (5,), bias_axes="c", n_frequency=9)(x)
    return keras.Model(inputs, x)


def _grads(layer, x, weight):
    """Gradients of sum(layer(x) * weight) w.r.t. the coefficients and x."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * weight)
        dc, dx = tape.gradient(loss, [layer.coefficients.value, x])
        return np.asarray(dc), np.asarray(dx)
    if backend == "jax":
        import jax

        def loss(values, inputs):
            with keras.StatelessScope(state_mapping=[(layer.coefficients, values)]):
                return (layer(inputs) * weight).sum()

        dc, dx = jax.grad(loss, argnums=(0, 1))(layer.coefficients.value, x)
        return np.asarray(dc), np.asarray(dx)
    import torch

    inputs = torch.tensor(x, requires_grad=True)
    value = layer.coefficients.value
    loss = (layer(inputs) * torch.tensor(weight)).sum()
    dc, dx = torch.autograd.grad(loss, [value, inputs])
    return dc.numpy(), dx.numpy()


class FourierLayerMathTest(testing.TestCase):
    @parameterized.named_parameters(named_product(case=range(3), compute=COMPUTE))
    def test_dense_forward_matches_peft(self, case, compute):
        c = peft_cases()[case]
        layers = peft_layers()
        dense = keras.layers.Dense(c["out_features"])
        dense.build((None, c["in_features"]))
        dense.kernel.assign(layers[f"case{case}_base_weight"].T)
        dense.bias.assign(layers[f"case{case}_base_bias"])
        layer = _adapt(
            dense,
            n_frequency=c["n_frequency"],
            scaling=c["scaling"],
            seed=c["random_loc_seed"],
            compute=compute,
        )
        layer.set_spectrum(layers[f"case{case}_coefficients"])
        y = ops.convert_to_numpy(layer(layers[f"case{case}_x"]))
        self.assertAllClose(y, layers[f"case{case}_y"], atol=1e-5, rtol=1e-7)

    def test_only_coefficients_are_trainable(self):
        layer = _adapt(_dense(12, 10), n_frequency=7)
        self.assertEqual([v.name for v in layer.trainable_weights], ["coefficients"])
        self.assertEqual(tuple(layer.coefficients.shape), (7,))
        self.assertEqual(
            sorted(v.name for v in layer.non_trainable_weights),
            [
                "bias",
                "fourierft_active",
                "kernel",
            ],
        )

    def test_unbuilt_layer_is_built_on_first_call(self):
        layer = FourierDense(6, name="proj", n_frequency=5)
        self.assertFalse(layer.built)
        y = layer(np.ones((2, 4), "float32"))
        self.assertEqual(tuple(y.shape), (2, 6))
        self.assertEqual(layer.name, "proj")
        self.assertEqual([v.name for v in layer.trainable_weights], ["coefficients"])

    @parameterized.named_parameters(named_product(EINSUM_CASES, compute=COMPUTE))
    def test_einsum_forward_matches_numpy_reference(
        self, equation, output_shape, input_shape, view, from_2d, compute
    ):
        base = _einsum(equation, output_shape, input_shape)
        kernel = ops.convert_to_numpy(base.kernel)
        info = kernel_view(equation, kernel.shape)
        self.assertEqual((info["in_features"], info["out_features"]), view)
        layer = _adapt(base, n_frequency=20, scaling=3.0, seed=11, compute=compute)
        spectrum = np.random.default_rng(1).normal(size=20).astype("float32")
        layer.set_spectrum(spectrum)
        locations = frequency_locations(view[1], view[0], 20, seed=11)
        delta_2d = _numpy_delta(spectrum, locations, view[0], view[1], 3.0)
        adapted_kernel = kernel + from_2d(delta_2d)
        x = np.random.default_rng(2).normal(size=input_shape).astype("float32")
        expected = np.einsum(equation, x, adapted_kernel)
        y = ops.convert_to_numpy(layer(x))
        self.assertAllClose(y, expected, atol=1e-4, rtol=1e-4)

    def test_bert_query_view_is_transposed_linear_weight(self):
        base = _einsum("abc,cde->abde", (None, 3, 4), (1, 2, 16))
        kernel = ops.convert_to_numpy(base.kernel)
        linear_weight = kernel.reshape(16, 12).T  # HF (out, in)
        layer = _adapt(base, n_frequency=10, seed=4)
        delta = ops.convert_to_numpy(layer.delta_weight()).reshape(16, 12)
        locations = frequency_locations(12, 16, 10, seed=4)
        spectrum = ops.convert_to_numpy(layer.spectrum)
        expected = _numpy_delta(spectrum, locations, 16, 12, 150.0)
        self.assertAllClose(delta, expected, atol=1e-4, rtol=1e-7)
        self.assertEqual(linear_weight.shape, (12, 16))

    @parameterized.named_parameters(named_product(compute=COMPUTE))
    def test_gradient_matches_finite_differences(self, compute):
        layer = _adapt(
            _dense(6, 5),
            n_frequency=8,
            scaling=10.0,
            lr_multiplier=1.0,
            compute=compute,
        )
        rng = np.random.default_rng(3)
        x = keras.Variable(rng.normal(size=(4, 5)).astype("float32"))

        def loss():
            return ops.sum(ops.tanh(layer(x)) ** 2)

        for variable in (layer.coefficients, x):
            grad = gradient(loss, variable)
            numeric = _finite_difference(loss, variable)
            self.assertAllClose(grad, numeric, atol=2e-3, rtol=2e-2)
            self.assertGreater(np.abs(grad).max(), 1e-3)

    def test_lr_multiplier_keeps_function_and_scales_storage(self):
        base = _dense(6, 5)
        plain = _adapt(_dense(6, 5), n_frequency=8, coefficient_initializer="zeros")
        boosted = _adapt(
            base, n_frequency=8, lr_multiplier=50.0, coefficient_initializer="zeros"
        )
        spectrum = np.arange(8, dtype="float32")
        plain.set_spectrum(spectrum)
        boosted.set_spectrum(spectrum)
        self.assertAllClose(
            ops.convert_to_numpy(boosted.coefficients),
            spectrum / 50.0,
            atol=0,
            rtol=1e-6,
        )
        x = np.ones((2, 5), "float32")
        self.assertAllClose(
            ops.convert_to_numpy(plain(x)),
            ops.convert_to_numpy(boosted(x)),
            atol=1e-4,
            rtol=1e-7,
        )

    def test_zero_init_is_identity_and_normal_init_is_not(self):
        base = _dense(6, 5)
        x = np.ones((2, 5), "float32")
        expected = ops.convert_to_numpy(base(x))
        zero = _adapt(base, n_frequency=8, coefficient_initializer="zeros")
        self.assertAllClose(
            ops.convert_to_numpy(zero(x)), expected, atol=1e-6, rtol=1e-7
        )
        normal = _adapt(_dense(6, 5), n_frequency=8)
        spectrum = ops.convert_to_numpy(normal.spectrum)
        self.assertGreater(spectrum.std(), 0.3)
        self.assertGreater(
            np.abs(ops.convert_to_numpy(normal(x)) - expected).max(), 1e-3
        )

    @parameterized.named_parameters(named_product(compute=COMPUTE))
    def test_empty_batch(self, compute):
        dense = _adapt(_dense(6, 5), n_frequency=8, compute=compute)
        einsum = _adapt(
            _einsum("btd,dh->bth", (None, 4), (2, 3, 5)), n_frequency=8, compute=compute
        )
        self.assertEqual(tuple(dense(np.ones((0, 5), "float32")).shape), (0, 6))
        self.assertEqual(tuple(einsum(np.ones((2, 0, 5), "float32")).shape), (2, 0, 4))

    def test_disabled_adapter_gives_base_output(self):
        base = _dense(4, 3)
        x = np.ones((1, 3), "float32")
        expected = ops.convert_to_numpy(base(x))
        layer = _adapt(base, n_frequency=5)
        layer.adapter_enabled = False
        self.assertAllClose(
            ops.convert_to_numpy(layer(x)), expected, atol=1e-6, rtol=1e-7
        )
        # The adapter is live when on: turning it off changes the output by the
        # numpy reference update, so a `call` that ignored the adapter fails.
        layer.adapter_enabled = True
        delta = _numpy_delta(
            ops.convert_to_numpy(layer.spectrum), layer.locations, 3, 4, layer.scaling
        )
        self.assertAllClose(
            ops.convert_to_numpy(layer(x)), expected + x @ delta, atol=1e-4, rtol=1e-7
        )
        self.assertGreater(np.abs(x @ delta).max(), 1e-2)

    @parameterized.named_parameters(EINSUM_CASES[1:5])
    def test_compute_paths_agree_with_gradients(
        self, equation, output_shape, input_shape, view, from_2d
    ):
        layer = _adapt(
            _einsum(equation, output_shape, input_shape), n_frequency=25, seed=5
        )
        rng = np.random.default_rng(3)
        x = rng.normal(size=input_shape).astype("float32")
        results = {}
        for compute in COMPUTE:
            layer.compute = compute
            y = ops.convert_to_numpy(layer(x))
            weight = np.random.default_rng(4).normal(size=y.shape).astype("float32")
            results[compute] = (y,) + _grads(layer, x, weight)
        for dense, activation in zip(*results.values(), strict=True):
            scale = np.abs(dense).max()
            self.assertGreater(scale, 1e-3)
            self.assertAllClose(activation, dense, atol=1e-5 * scale, rtol=1e-5)

    def test_auto_compute_picks_by_shape(self):
        small = _adapt(_dense(16, 16), n_frequency=20)
        big = keras.layers.Dense(4096)
        big.build((None, 4096))
        _adapt(big, n_frequency=1000)
        rows = ops.zeros((512, 16))
        self.assertEqual(small._compute_mode(rows), "dense")
        self.assertEqual(big._compute_mode(ops.zeros((512, 4096))), "activation")


class MergeAndExportTest(testing.TestCase):
    def test_merge_unmerge_and_plain_export(self):
        base = _dense(9, 7, activation="relu")
        original = ops.convert_to_numpy(base.kernel).copy()
        layer = _adapt(base, n_frequency=12)
        x = np.random.default_rng(5).normal(size=(3, 7)).astype("float32")
        adapted = ops.convert_to_numpy(layer(x))
        layer.merge()
        self.assertTrue(layer.merged)
        self.assertAllClose(
            ops.convert_to_numpy(layer(x)), adapted, atol=1e-5, rtol=1e-7
        )
        expected_kernel = original + ops.convert_to_numpy(layer.delta_weight())
        self.assertAllClose(
            ops.convert_to_numpy(layer.kernel), expected_kernel, atol=1e-6, rtol=1e-7
        )
        layer.merge()  # no-op
        plain = layer.to_plain_layer()
        self.assertIs(type(plain), keras.layers.Dense)
        self.assertEqual(plain.name, base.name)
        self.assertAllClose(
            ops.convert_to_numpy(plain(x)), adapted, atol=1e-5, rtol=1e-7
        )
        layer.unmerge()
        self.assertAllEqual(ops.convert_to_numpy(layer.kernel), original)
        self.assertAllClose(
            ops.convert_to_numpy(layer(x)), adapted, atol=1e-5, rtol=1e-7
        )

    def test_einsum_plain_export(self):
        base = _einsum("btd,ndh->btnh", (None, 3, 4), (2, 5, 16))
        layer = _adapt(base, n_frequency=30)
        x = np.random.default_rng(6).normal(size=(2, 5, 16)).astype("float32")
        plain = layer.to_plain_layer()
        self.assertIs(type(plain), keras.layers.EinsumDense)
        self.assertAllClose(
            ops.convert_to_numpy(plain(x)),
            ops.convert_to_numpy(layer(x)),
            atol=1e-4,
            rtol=1e-7,
        )

    def test_ellipsis_plain_export_takes_the_inputs_of_the_adapted_layer(self):
        base = _einsum("...d,dh->...h", (4,), (2, 3, 5, 6))
        layer = _adapt(base, n_frequency=10)
        x = np.random.default_rng(7).normal(size=(2, 3, 5, 6)).astype("float32")
        plain = layer.to_plain_layer()
        self.assertAllClose(
            ops.convert_to_numpy(plain(x)),
            ops.convert_to_numpy(layer(x)),
            atol=1e-4,
            rtol=1e-7,
        )

    def test_safe_merge_refuses_non_finite(self):
        base = _dense(4, 3)
        original = ops.convert_to_numpy(base.kernel).copy()
        layer = _adapt(base, n_frequency=5, coefficient_initializer="zeros")
        with pytest.raises(ValueError, match="NaN or Inf"):
            layer.set_spectrum([np.inf, 0, 0, 0, 0])
        layer.coefficients.assign(np.array([np.inf, 0, 0, 0, 0], "float32"))
        with pytest.raises(ValueError, match="non-finite"):
            layer.merge(safe_merge=True)
        self.assertFalse(layer.merged)
        self.assertAllEqual(ops.convert_to_numpy(layer.kernel), original)

    def test_merged_contract(self):
        layer = _adapt(_dense(6, 5), n_frequency=8)
        x = np.ones((2, 5), "float32")
        adapted = ops.convert_to_numpy(layer(x))
        layer.merge()
        self.assertFalse(layer.coefficients.trainable)
        with pytest.raises(ValueError, match="unmerge"):
            layer.adapter_enabled = False
        self.assertAllClose(
            ops.convert_to_numpy(layer(x)), adapted, atol=1e-5, rtol=1e-7
        )
        layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
        with pytest.raises(ValueError, match="changed while"):
            layer.unmerge()
        self.assertTrue(layer.merged)
        layer.unmerge(force=True)
        self.assertFalse(layer.merged)
        self.assertTrue(layer.coefficients.trainable)
        layer.adapter_enabled = False
        with pytest.raises(ValueError, match="turned off"):
            layer.merge()

    def test_unload_fourierft_in_place(self):
        layer = _adapt(_dense(6, 5), n_frequency=8)
        x = np.ones((2, 5), "float32")
        adapted = ops.convert_to_numpy(layer(x))
        unload_fourierft(layer, merge=True)
        self.assertIs(type(layer), keras.layers.Dense)
        self.assertEqual([v.name for v in layer.weights], ["kernel", "bias"])
        self.assertAllClose(
            ops.convert_to_numpy(layer(x)), adapted, atol=1e-5, rtol=1e-7
        )


class LayerSavingTest(testing.TestCase):
    def test_keras_file_round_trip(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        model = _small_model()
        x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
        expected = ops.convert_to_numpy(model(x))
        path = os.path.join(tmp_path, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertIsInstance(restored.layers[1], FourierDense)
        self.assertIsInstance(restored.layers[2], FourierEinsumDense)
        self.assertEqual(restored.layers[2].n_frequency, 9)
        self.assertAllClose(
            ops.convert_to_numpy(restored(x)), expected, atol=1e-6, rtol=1e-7
        )

    def test_weights_round_trip(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        model = _small_model()
        x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
        expected = ops.convert_to_numpy(model(x))
        path = os.path.join(tmp_path, "model.weights.h5")
        model.save_weights(path)
        other = _small_model()
        self.assertFalse(np.allclose(ops.convert_to_numpy(other(x)), expected))
        other.load_weights(path)
        self.assertAllClose(
            ops.convert_to_numpy(other(x)), expected, atol=1e-6, rtol=1e-7
        )

    def test_merged_layer_saves_unmerged_kernel(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        model = _small_model()
        x = np.ones((2, 6), "float32")
        expected = ops.convert_to_numpy(model(x))
        model.layers[1].merge()
        path = os.path.join(tmp_path, "model.weights.h5")
        model.save_weights(path)
        other = _small_model()
        other.load_weights(path)
        self.assertFalse(other.layers[1].merged)
        self.assertAllClose(
            ops.convert_to_numpy(other(x)), expected, atol=1e-5, rtol=1e-7
        )

    def test_get_config_round_trip(self):
        layer = _adapt(
            _dense(5, 4),
            n_frequency=6,
            scaling=20.0,
            seed=3,
            coefficient_initializer="zeros",
            lr_multiplier=4.0,
        )
        clone = FourierDense.from_config(layer.get_config())
        self.assertEqual(clone.lr_multiplier, 4.0)
        self.assertEqual(clone.seed, 3)
        clone.build((None, 4))
        self.assertEqual(clone.get_config(), layer.get_config())
        self.assertAllEqual(clone.locations, layer.locations)

    def test_in_place_keeps_identity_paths_and_file_layout(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(12, name="query"),
                keras.layers.Dense(3),
            ]
        )
        plain_file = str(tmp_path / "plain.weights.h5")
        model.save_weights(plain_file)
        query = model.layers[0]
        paths = [v.path for v in model.weights]
        _adapt(query, n_frequency=8)
        self.assertIs(model.layers[0], query)
        self.assertIsInstance(query, FourierDense)
        self.assertEqual([v.path for v in model.weights][:2], paths[:2])
        adapted_file = str(tmp_path / "adapted.weights.h5")
        model.save_weights(adapted_file)
        import h5py

        with h5py.File(plain_file) as plain, h5py.File(adapted_file) as adapted:
            self.assertEqual(sorted(plain["layers"]), sorted(adapted["layers"]))
            self.assertEqual(sorted(adapted["layers"]), ["dense", "dense_1"])
            # The plain entries where the plain layer has them; the coefficients
            # in the adapter's own group.
            self.assertLen(adapted["layers/dense/vars"], 2)
            self.assertEqual(list(adapted["layers/dense/_fourierft/vars"]), ["0"])
            self.assertAllEqual(
                adapted["layers/dense/_fourierft/vars/0"][()],
                ops.convert_to_numpy(query.coefficients),
            )
        model.load_weights(plain_file)


class AdaptLayerValidationTest(testing.TestCase):
    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="positive integer"):
            _adapt(_dense(4, 3), n_frequency=0)
        with pytest.raises(ValueError, match="does not fit"):
            _adapt(_dense(4, 3), n_frequency=13)
        with pytest.raises(TypeError, match="Dense"):
            _adapt(keras.layers.Conv1D(3, 2))
        adapted = _adapt(_dense(4, 3), n_frequency=3)
        with pytest.raises(ValueError, match="already has a FourierFT adapter"):
            _adapt(adapted)
        lora = _dense(4, 3)
        lora.enable_lora(2)
        with pytest.raises(ValueError, match="LoRA"):
            _adapt(lora)
        with pytest.raises(ValueError, match="kernel_constraint"):
            _adapt(_dense(4, 3, kernel_constraint="non_neg"))
        with pytest.raises(ValueError, match="sampling"):
            _adapt(_dense(4, 3), sampling="other")
        with pytest.raises(ValueError, match="lr_multiplier"):
            _adapt(_dense(4, 3), n_frequency=2, lr_multiplier=0)
        with pytest.raises(ValueError, match="n_frequency"):
            _adapt(_dense(4, 3), n_frequency=2.5)
        with pytest.raises(ValueError, match="compute"):
            _adapt(_dense(4, 3), n_frequency=2, compute="sparse")
        with pytest.raises(TypeError, match=r"enable_fourierft\(layer, .*adapt_layer"):
            FourierDense(_dense(4, 3), n_frequency=2)

    def test_rejected_wrap_leaves_layer_untouched(self):
        base = _dense(4, 3)
        with pytest.raises(ValueError):
            _adapt(base, n_frequency=100)
        self.assertIs(type(base), keras.layers.Dense)
        self.assertTrue(base.kernel.trainable)
        self.assertTrue(base.bias.trainable)
        self.assertEqual([v.name for v in base.weights], ["kernel", "bias"])

    def test_user_subclass_is_refused(self):
        class Scaled(keras.layers.Dense):
            def call(self, inputs):
                return super().call(inputs) * 2

        layer = Scaled(4)
        layer.build((None, 3))
        with pytest.raises(TypeError, match="subclass"):
            _adapt(layer, n_frequency=3)
        self.assertIs(type(layer), Scaled)
        self.assertLen(layer.weights, 2)


class PrecisionTest(testing.TestCase):
    @parameterized.named_parameters(
        named_product(policy=["mixed_float16", "mixed_bfloat16"])
    )
    def test_mixed_precision_fit(self, policy):
        keras.config.set_dtype_policy(policy)
        inputs = keras.Input((8,))
        hidden = FourierDense(16, n_frequency=20, scaling=10.0)
        outputs = keras.layers.Dense(1, dtype="float32")(hidden(inputs))
        model = keras.Model(inputs, outputs)
        self.assertEqual(hidden.compute_dtype, policy.split("_")[1])
        self.assertEqual(hidden.coefficients.dtype, "float32")
        y_hidden = hidden(np.ones((2, 8), "float32"))
        self.assertEqual(
            keras.backend.standardize_dtype(y_hidden.dtype), hidden.compute_dtype
        )
        before = ops.convert_to_numpy(hidden.coefficients).copy()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        history = model.fit(x, x[:, :1], epochs=2, batch_size=8, verbose=0)
        self.assertTrue(np.all(np.isfinite(history.history["loss"])))
        self.assertFalse(np.allclose(ops.convert_to_numpy(hidden.coefficients), before))

    @parameterized.named_parameters(
        named_product(policy=["bfloat16", "mixed_bfloat16"], compute=COMPUTE)
    )
    def test_bfloat16_merge_rounds_the_float32_sum_once(self, policy, compute):
        layer = _dense(64, 48, dtype=policy)
        _adapt(layer, n_frequency=30, scaling=150.0, seed=2, compute_path=compute)
        rng = np.random.default_rng(3)
        # A small update next to the kernel, as a trained adapter is.
        spectrum = 0.2 * rng.normal(size=30)
        layer.set_spectrum(spectrum)
        kernel = np.asarray(ops.convert_to_numpy(ops.cast(layer.kernel, "float32")))
        locations = frequency_locations(64, 48, 30, seed=2)
        delta = _numpy_delta(spectrum, locations, 48, 64, 150.0)
        x = rng.normal(size=(4, 1, 48)).astype("float32")
        x_compute = ops.convert_to_numpy(
            ops.cast(ops.cast(x, layer.compute_dtype), "float32")
        ).astype("float64")
        bias = ops.convert_to_numpy(ops.cast(layer.bias, "float32"))
        reference = x_compute @ (kernel + delta) + bias
        unmerged = ops.convert_to_numpy(ops.cast(layer(x), "float32"))
        layer.merge()
        merged_kernel = ops.convert_to_numpy(layer.kernel)
        # One rounding of the float32 sum into the variable's dtype.
        delta_float32 = ops.convert_to_numpy(layer.delta_weight())
        self.assertAllClose(delta_float32, delta, atol=1e-6, rtol=1e-6)
        expected_kernel = (kernel + delta_float32).astype(merged_kernel.dtype)
        np.testing.assert_array_equal(merged_kernel, expected_kernel)
        merged = ops.convert_to_numpy(ops.cast(layer(x), "float32"))
        scale = np.abs(reference).max()
        # Both stay at bfloat16's output precision (8 significant bits).
        self.assertLess(np.abs(unmerged - reference).max() / scale, 2**-7)
        self.assertLess(np.abs(merged - reference).max() / scale, 2**-7)
        # The update is far above that precision: a lost update would show.
        self.assertGreater(np.abs(x_compute @ delta).max() / scale, 2**-5)

    @parameterized.named_parameters(
        named_product(
            mode=["int8", "int4", "float8"], order=["quantize_first", "adapt_first"]
        )
    )
    def test_quantized_base(self, mode, order):
        rng = np.random.default_rng(0)
        base = _dense(32, 64)
        x = rng.normal(size=(8, 64)).astype("float32")
        float_layer = _adapt(_dense(32, 64), n_frequency=40, scaling=20.0)
        float_layer.set_spectrum(rng.normal(size=40))
        expected = ops.convert_to_numpy(float_layer(x))
        if order == "quantize_first":
            base.quantize(mode)
            _adapt(base, n_frequency=40, scaling=20.0)
        else:
            _adapt(base, n_frequency=40, scaling=20.0)
            base.quantize(mode)
        self.assertEqual(base.quantization_mode, mode)
        base.set_spectrum(ops.convert_to_numpy(float_layer.spectrum))
        trainable = [v.name for v in base.trainable_weights]
        # float8 layers update their own scale variables through gradients.
        self.assertIn("coefficients", trainable)
        self.assertFalse(base._kernel.trainable)
        self.assertTrue(len(trainable) == 1 or mode == "float8")
        y = ops.convert_to_numpy(base(x))
        error = np.abs(y - expected).max() / np.abs(expected).max()
        self.assertLess(
            error, {"int8": 0.02, "int4": 0.2, "float8": 0.1}[mode], msg=error
        )
        base.adapter_enabled = False
        unadapted = ops.convert_to_numpy(base(x))
        base.adapter_enabled = True
        self.assertGreater(np.abs(y - unadapted).max(), 0.1)
        with pytest.raises(ValueError, match="quantized"):
            base.merge()

    def test_unsupported_quantization_mode_is_refused(self):
        layer = _adapt(_dense(4, 3), n_frequency=3)
        with pytest.raises(ValueError, match="(?i)gptq"):
            layer.quantize("gptq")


class LayerContractTest(testing.TestCase):
    def test_run_layer_test_for_both_classes(self):
        self.run_layer_test(
            FourierDense,
            init_kwargs={"units": 6, "n_frequency": 5, "compute_path": "activation"},
            input_shape=(2, 4),
            expected_output_shape=(2, 6),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=3,
            supports_masking=True,
            run_training_check=True,
        )
        self.run_layer_test(
            FourierEinsumDense,
            init_kwargs={
                "equation": "abc,cde->abde",
                "output_shape": (5, 3, 4),
                "bias_axes": "de",
                "n_frequency": 7,
            },
            input_shape=(2, 5, 8),
            expected_output_shape=(2, 5, 3, 4),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=3,
            run_training_check=True,
        )


class LayerHardeningTest(testing.TestCase):
    def test_concurrent_quantized_calls_keep_the_activation(self):
        layer = _dense(64, 32, activation="relu")
        layer.quantize("int8")
        _adapt(layer, n_frequency=30, scaling=20.0)
        x = np.random.default_rng(0).normal(size=(64, 32)).astype("float32")
        expected = ops.convert_to_numpy(layer(x))
        self.assertGreaterEqual(expected.min(), 0.0)
        errors = []

        def work():
            try:
                for _ in range(30):
                    y = ops.convert_to_numpy(layer(x))
                    if y.min() < 0:
                        errors.append("activation skipped")
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertIs(layer.activation, keras.activations.relu)
        self.assertAllClose(ops.convert_to_numpy(layer(x)), expected)

    @pytest.mark.skipif(
        keras.backend.backend() == "jax",
        reason="JAX computes float64 layers in float32 unless x64 is enabled",
    )
    def test_float64_layers_are_exact(self):
        rng = np.random.default_rng(0)
        kernel = rng.normal(size=(6, 5)) + 1e-9
        plain = keras.layers.Dense(5, dtype="float64")
        plain.build((None, 6))
        plain.kernel.assign(kernel)
        x = rng.normal(size=(3, 6))
        expected = ops.convert_to_numpy(plain(x))
        layer = keras.layers.Dense(5, dtype="float64")
        layer.build((None, 6))
        layer.kernel.assign(kernel)
        _adapt(layer, n_frequency=4, coefficient_initializer="zeros", compute="dense")
        y = ops.convert_to_numpy(layer(x))
        self.assertEqual(y.dtype, np.float64)
        np.testing.assert_array_equal(y, expected)
        layer.merge()
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.kernel), kernel)
        layer.unmerge()
        unload_fourierft(layer, merge=True)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.kernel), kernel)

    def test_lora_on_an_adapted_layer_is_refused(self):
        layer = _adapt(_dense(6, 5), n_frequency=8)
        with self.assertRaisesRegex(ValueError, "LoRA"):
            layer.enable_lora(2)
        self.assertFalse(layer.lora_enabled)
        self.assertEqual([v.name for v in layer.trainable_weights], ["coefficients"])

    def test_constructor_refuses_lora_rank_and_constraints(self):
        with self.assertRaisesRegex(ValueError, "lora_rank"):
            FourierDense(4, n_frequency=3, lora_rank=2)
        with self.assertRaisesRegex(ValueError, "lora_rank"):
            FourierEinsumDense("ab,bc->ac", (4,), n_frequency=3, lora_rank=2)
        with self.assertRaisesRegex(ValueError, "kernel_constraint"):
            FourierDense(4, n_frequency=3, kernel_constraint="non_neg")
        with self.assertRaisesRegex(ValueError, "kernel_constraint"):
            FourierEinsumDense(
                "ab,bc->ac", (4,), n_frequency=3, kernel_constraint="non_neg"
            )

    def test_quantizing_a_merged_model_changes_no_layer_first(self):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(12, name="first"),
                keras.layers.Dense(12, name="query"),
                keras.layers.Dense(3, name="head"),
            ]
        )
        query = _adapt(model.get_layer("query"), n_frequency=8)
        query.merge()
        x = np.ones((2, 6), "float32")
        merged_output = ops.convert_to_numpy(model(x))
        model.quantize("int8")
        # Every layer is quantized and the adapter runs unmerged on the
        # quantized base: the model stays consistent.
        for layer in model.layers:
            self.assertEqual(layer.quantization_mode, "int8")
        self.assertFalse(query.merged)
        self.assertTrue(query.adapter_enabled)
        output = ops.convert_to_numpy(model(x))
        scale = np.abs(merged_output).max()
        self.assertAllClose(output, merged_output, rtol=0, atol=0.03 * scale)
        query.adapter_enabled = False
        self.assertNotAllClose(ops.convert_to_numpy(model(x)), output)

    def test_repr_and_summary_show_the_adapted_class(self):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        layer = _adapt(model.layers[0], n_frequency=5)
        self.assertIn("FourierDense", repr(layer))
        lines = []
        model.summary(print_fn=lambda line, **kwargs: lines.append(line))
        self.assertIn("FourierDense", "\n".join(lines))


class WeightFilesTest(testing.TestCase):
    def test_adapted_weights_file_loads_into_the_plain_model(self):
        def build():
            keras.utils.set_random_seed(3)
            return keras.Sequential(
                [
                    keras.Input((6,)),
                    keras.layers.Dense(12, name="query"),
                    keras.layers.Dense(3, name="head"),
                ]
            )

        model = build()
        _adapt(model.get_layer("query"), n_frequency=8)
        model.get_layer("head").kernel.assign(np.full((12, 3), 0.5, "float32"))
        path = os.path.join(self.get_temp_dir(), "adapted.weights.h5")
        model.save_weights(path)
        plain = build()
        plain.load_weights(path)
        self.assertAllClose(
            plain.get_layer("head").kernel, np.full((12, 3), 0.5, "float32")
        )
        self.assertAllClose(
            plain.get_layer("query").kernel,
            model.get_layer("query").original_kernel(),
        )


class ComputePathRenameTest(testing.TestCase):
    def test_compute_is_a_deprecated_name_of_compute_path(self):
        with pytest.warns(DeprecationWarning, match="compute_path"):
            config = FourierFTConfig(compute="dense")
        self.assertEqual(config.compute_path, "dense")
        self.assertNotIn("compute", config.to_dict())
        with pytest.warns(DeprecationWarning, match="compute_path"):
            layer = FourierDense(4, n_frequency=3, compute="activation")
        self.assertEqual(layer.compute_path, "activation")
        with self.assertRaisesRegex(ValueError, "compute_path"):
            FourierFTConfig(compute_path="dense", compute="activation")
        with self.assertRaisesRegex(ValueError, "compute_path"):
            FourierFTConfig(compute_path="fast")

    def test_files_with_the_old_key_load(self):
        config = FourierFTConfig.from_dict({"n_frequency": 9, "compute": "dense"})
        self.assertEqual(config.compute_path, "dense")
        self.assertEqual(config.n_frequency, 9)
