"""The default coefficient learning-rate multiplier trains where naive does not."""

import keras
import numpy as np
from keras.src import testing

from keras_fourierft import enable_fourierft
from keras_fourierft.config import DEFAULT_LR_MULTIPLIER
from tests.helpers import gradient


def _final_loss_ratio(lr_multiplier):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 32)).astype("float32")
    teacher = keras.layers.Dense(32, use_bias=False)
    teacher.build((None, 32))
    enable_fourierft(
        teacher, n_frequency=64, scaling=150.0, coefficient_initializer="zeros"
    )
    adapted_teacher = teacher
    adapted_teacher.set_spectrum(rng.normal(size=64))
    y = keras.ops.convert_to_numpy(adapted_teacher(x))
    student_base = keras.layers.Dense(32, use_bias=False)
    student_base.build((None, 32))
    student_base.kernel.assign(teacher.kernel)
    student = student_base
    enable_fourierft(
        student_base,
        n_frequency=64,
        scaling=150.0,
        coefficient_initializer="zeros",
        lr_multiplier=lr_multiplier,
    )
    inputs = keras.Input((32,))
    model = keras.Model(inputs, student(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    start = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=10, batch_size=16, verbose=0, shuffle=False)
    return model.evaluate(x, y, verbose=0) / start


def test_default_multiplier_learns_where_naive_setup_does_not():
    naive = _final_loss_ratio(1.0)
    default = _final_loss_ratio(DEFAULT_LR_MULTIPLIER)
    assert default < 0.1, default
    assert naive > 0.5, naive


def _adapted_dense(lr_multiplier):
    layer = keras.layers.Dense(8, use_bias=False)
    layer.build((None, 8))
    enable_fourierft(
        layer,
        n_frequency=6,
        coefficient_initializer="zeros",
        lr_multiplier=lr_multiplier,
    )
    layer.set_spectrum(np.ones(6))
    return layer


def _spectrum(layer):
    return keras.ops.convert_to_numpy(layer.spectrum)


class WeightDecayAndClippingTest(testing.TestCase):
    # Zero gradients: an AdamW step then only applies the weight decay.

    def test_adamw_decays_the_stored_coefficients_at_the_plain_rate(self):
        layer = _adapted_dense(DEFAULT_LR_MULTIPLIER)
        optimizer = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=2.0)
        zeros = keras.ops.zeros((6,), "float32")
        optimizer.apply_gradients([(zeros, layer.coefficients)])
        # spectrum * (1 - lr * wd): the decay of the learning rate passed, not
        # of the coefficients' 30x larger effective learning rate.
        self.assertAllClose(_spectrum(layer), np.full(6, 0.98), atol=1e-6)

    def test_excluded_coefficients_do_not_decay(self):
        layer = _adapted_dense(DEFAULT_LR_MULTIPLIER)
        other = keras.Variable(np.ones(3, "float32"), name="other")
        optimizer = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=2.0)
        optimizer.exclude_from_weight_decay(var_names=["coefficients"])
        optimizer.apply_gradients(
            [
                (keras.ops.zeros((6,), "float32"), layer.coefficients),
                (keras.ops.zeros((3,), "float32"), other),
            ]
        )
        self.assertAllClose(_spectrum(layer), np.ones(6), atol=0)
        self.assertAllClose(other, np.full(3, 0.98), atol=1e-6)

    def test_stored_gradients_scale_with_the_multiplier(self):
        x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
        grads = {}
        for multiplier in (1.0, DEFAULT_LR_MULTIPLIER):
            keras.utils.set_random_seed(0)
            layer = _adapted_dense(multiplier)
            grads[multiplier] = gradient(
                lambda layer=layer: keras.ops.sum(layer(x) ** 2), layer.coefficients
            )
        self.assertGreater(np.abs(grads[1.0]).max(), 1e-3)
        # So the coefficients' gradients dominate `global_clipnorm`, and a
        # per-variable `clipnorm` clips them lr_multiplier times sooner.
        self.assertAllClose(
            grads[DEFAULT_LR_MULTIPLIER], DEFAULT_LR_MULTIPLIER * grads[1.0], rtol=1e-4
        )
