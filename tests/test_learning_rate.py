"""The default coefficient learning-rate multiplier trains where naive does not."""

import keras
import numpy as np

from keras_fourierft import adapt_layer
from keras_fourierft.config import DEFAULT_LR_MULTIPLIER


def _final_loss_ratio(lr_multiplier):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 32)).astype("float32")
    teacher = keras.layers.Dense(32, use_bias=False)
    teacher.build((None, 32))
    adapted_teacher = adapt_layer(
        teacher, n_frequency=64, scaling=150.0, coefficient_initializer="zeros"
    )
    adapted_teacher.set_spectrum(rng.normal(size=64))
    y = keras.ops.convert_to_numpy(adapted_teacher(x))
    student_base = keras.layers.Dense(32, use_bias=False)
    student_base.build((None, 32))
    student_base.kernel.assign(teacher.kernel)
    student = adapt_layer(
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
