import importlib.util
import json
import pathlib

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops
from keras.src import testing
from keras.src.testing.test_utils import named_product

from keras_fourierft import frequency_locations
from keras_fourierft.spectral import activation_plan
from keras_fourierft.spectral import choose_compute
from keras_fourierft.spectral import delta_from_plan
from keras_fourierft.spectral import kernel_indices
from keras_fourierft.spectral import ops_delta_from_plan
from keras_fourierft.spectral import ops_spectral_matmul
from keras_fourierft.spectral import rowwise_spectral_matmul
from keras_fourierft.spectral import spectral_delta
from keras_fourierft.spectral import spectral_matmul
from keras_fourierft.spectral import spectral_plan
from tests.helpers import gradient
from tests.helpers import peft_cases
from tests.helpers import peft_layers

RANDPERM = pathlib.Path(__file__).parent / "fixtures" / "randperm" / "locations.json"
LARGE_SEEDS = (2**31, 2**31 + 5, 2**32 - 1)
RANDPERM_CASES = json.loads(RANDPERM.read_text())["cases"]


BIASED = {"sampling": "frequency_biased", "center_frequency": 10.0, "bandwidth": 5.0}


def _shapes(*shapes):
    """`named_product` cases of a `shape` argument, named like `6x9`."""
    return [{"testcase_name": "x".join(map(str, s)), "shape": s} for s in shapes]


def _distance_from_zero(locations, size):
    return np.hypot(
        np.minimum(locations[0], size - locations[0]),
        np.minimum(locations[1], size - locations[1]),
    )


def _numpy_delta(coefficients, indices, shape, scaling):
    spectrum = np.zeros(shape, dtype=np.complex128)
    spectrum[indices[:, 0], indices[:, 1]] = coefficients
    return scaling * np.fft.ifft2(spectrum).real


def _edge_indices(rows, cols, extra, seed, row_zero_mirror_column=True):
    # Row and column 0, the Nyquist row/column (for even sizes), the last
    # row/column and their combinations, plus `extra` other distinct cells.
    # Without `row_zero_mirror_column`, cell (0, cols - cols // 2), whose
    # mirror is the last column of the half spectrum, is left out: then a
    # wrong mirror index of row 0 still lands inside the half spectrum and
    # only the values show it.
    edge_rows = sorted({0, 1, rows // 2, rows - 1})
    edge_cols = sorted({0, 1, cols // 2, cols - 1})
    cells = {(r, c) for r in edge_rows for c in edge_cols}
    if row_zero_mirror_column:
        cells.add((0, cols - cols // 2))
    rng = np.random.default_rng(seed)
    others = [divmod(int(i), cols) for i in rng.permutation(rows * cols)]
    cells.update([cell for cell in others if cell not in cells][:extra])
    if not row_zero_mirror_column:
        cells.discard((0, cols - cols // 2))
    order = rng.permutation(len(cells))
    return np.array(sorted(cells), dtype=np.int64)[order]


MEASURED = pathlib.Path(__file__).parent.parent / "benchmarks" / "results"


class FrequencyLocationsTest(testing.TestCase):
    @parameterized.named_parameters(named_product(case=range(8)))
    def test_locations_bit_identical_to_peft(self, case):
        c = peft_cases()[case]
        layers = peft_layers()
        locations = frequency_locations(
            c["out_features"], c["in_features"], c["n_frequency"], c["random_loc_seed"]
        )
        self.assertEqual(locations.shape, (2, c["n_frequency"]))
        self.assertAllEqual(locations[0], layers[f"case{case}_rows"])
        self.assertAllEqual(locations[1], layers[f"case{case}_cols"])

    def test_randperm_fixture_covers_the_large_seeds(self):
        self.assertEqual(sorted({c["seed"] for c in RANDPERM_CASES}), list(LARGE_SEEDS))
        self.assertLen(RANDPERM_CASES, 9)

    @parameterized.named_parameters(
        {
            "testcase_name": f"{c['seed']}_{c['out_features']}x{c['in_features']}",
            "c": c,
        }
        for c in RANDPERM_CASES
    )
    def test_locations_match_torch_at_seeds_beyond_31_bits(self, c):
        # Seeds in [2**31, 2**32) are valid torch seeds; MT19937 must be seeded
        # with all 32 bits (fixture values made with torch.randperm itself).
        locations = frequency_locations(
            c["out_features"], c["in_features"], c["n_frequency"], seed=c["seed"]
        )
        self.assertEqual(locations.shape, (2, c["n_frequency"]))
        self.assertAllEqual(locations[0], c["rows"])
        self.assertAllEqual(locations[1], c["cols"])

    @parameterized.named_parameters(
        named_product(
            _shapes((7, 5, 35), (64, 96, 300)),
            seed=LARGE_SEEDS + (2**31 - 1, 2**32 - 2**31 // 3),
        )
    )
    @pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="needs torch installed"
    )
    def test_locations_match_live_torch_randperm(self, seed, shape):
        import torch

        out_features, in_features, n = shape
        generator = torch.Generator().manual_seed(seed)
        permutation = torch.randperm(out_features * in_features, generator=generator)
        flat = permutation[:n].numpy()
        locations = frequency_locations(out_features, in_features, n, seed=seed)
        self.assertAllEqual(locations[0], flat // in_features)
        self.assertAllEqual(locations[1], flat % in_features)

    def test_locations_ignore_and_keep_global_random_state(self):
        import keras

        keras.utils.set_random_seed(1)
        first = frequency_locations(64, 32, 100, seed=3)
        np.random.seed(12345)
        state = np.random.get_state()
        keras.utils.set_random_seed(99)
        np.random.seed(12345)
        second = frequency_locations(64, 32, 100, seed=3)
        self.assertAllEqual(first, second)
        self.assertAllEqual(np.random.get_state()[1], state[1])

    def test_locations_distinct_and_in_range(self):
        locations = frequency_locations(40, 30, 1200, seed=5)
        flat = locations[0] * 30 + locations[1]
        self.assertLen(np.unique(flat), 1200)
        self.assertLess(locations[0].max(), 40)
        self.assertLess(locations[1].max(), 30)

    def test_all_locations_is_a_permutation(self):
        locations = frequency_locations(6, 7, 42, seed=1)
        self.assertEqual(sorted(locations[0] * 7 + locations[1]), list(range(42)))

    @parameterized.named_parameters(
        ("zero_frequencies", {"n_frequency": 0}, "positive integer"),
        ("negative_frequencies", {"n_frequency": -3}, "positive integer"),
        (
            "too_many_frequencies",
            {"n_frequency": 8 * 8 + 1},
            "larger than the number of entries",
        ),
        ("negative_seed", {"seed": -1}, "seed"),
        ("unknown_sampling", {"sampling": "gaussian"}, "sampling"),
    )
    def test_locations_reject_bad_input(self, kwargs, message):
        args = {"out_features": 8, "in_features": 8, "n_frequency": 10}
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            frequency_locations(**args)

    def test_frequency_biased_favours_the_band(self):
        locations = frequency_locations(128, 128, 500, seed=0, **BIASED)
        flat = locations[0] * 128 + locations[1]
        self.assertLen(np.unique(flat), 500)
        self.assertLess(abs(np.median(_distance_from_zero(locations, 128)) - 10.0), 3.0)
        uniform = frequency_locations(128, 128, 500, seed=0)
        self.assertGreater(np.median(_distance_from_zero(uniform, 128)), 30)
        again = frequency_locations(128, 128, 500, seed=0, **BIASED)
        self.assertAllEqual(locations, again)

    def test_frequency_biased_rejects_too_narrow_band(self):
        with pytest.raises(ValueError, match="non-zero probability"):
            frequency_locations(
                16,
                16,
                200,
                sampling="frequency_biased",
                center_frequency=1.0,
                bandwidth=0.01,
            )
        with pytest.raises(ValueError, match="bandwidth"):
            frequency_locations(16, 16, 20, sampling="frequency_biased")


class SpectralDeltaTest(testing.TestCase):
    @settings(max_examples=25, deadline=None)
    @given(
        rows=st.integers(1, 40),
        cols=st.integers(1, 40),
        fraction=st.floats(0.01, 1.0),
        seed=st.integers(0, 2**32 - 1),
        scaling=st.floats(0.1, 300.0),
    )
    def test_delta_matches_numpy_ifft2(self, rows, cols, fraction, seed, scaling):
        n = max(1, int(fraction * rows * cols))
        locations = frequency_locations(cols, rows, n, seed=seed)
        indices = kernel_indices(locations)
        coefficients = np.random.default_rng(seed).normal(size=n).astype("float32")
        delta = ops.convert_to_numpy(
            spectral_delta(coefficients, indices, (rows, cols), scaling)
        )
        self.assertEqual(delta.dtype, np.float32)
        expected = _numpy_delta(coefficients, indices, (rows, cols), scaling)
        self.assertAllClose(delta, expected, atol=1e-5 * scaling, rtol=1e-4)

    @parameterized.named_parameters(named_product(case=range(3)))
    def test_delta_matches_peft_fixture(self, case):
        c = peft_cases()[case]
        layers = peft_layers()
        locations = frequency_locations(
            c["out_features"], c["in_features"], c["n_frequency"], c["random_loc_seed"]
        )
        delta = spectral_delta(
            layers[f"case{case}_coefficients"],
            kernel_indices(locations),
            (c["in_features"], c["out_features"]),
            c["scaling"],
        )
        self.assertAllClose(
            ops.convert_to_numpy(delta),
            layers[f"case{case}_delta_w"].T,
            atol=1e-5,
            rtol=1e-7,
        )

    def test_delta_is_float32_for_half_precision_spectrum(self):
        delta = spectral_delta(
            ops.ones((3,), dtype="float16"),
            np.array([[0, 0], [1, 2], [2, 1]]),
            (3, 3),
            2.0,
        )
        self.assertEqual(ops.convert_to_numpy(delta).dtype, np.float32)

    @parameterized.named_parameters(
        named_product(
            _shapes((6, 9), (8, 8), (7, 4), (1, 5)),
            delta_fn=[delta_from_plan, ops_delta_from_plan],
        )
    )
    def test_delta_gradient_matches_numpy(self, shape, delta_fn):
        # d sum(delta * G) / d c_k = scaling * Re(IDFT2(G))[u_k, v_k]: an
        # independent closed form, for the backend's own path (torch-native on
        # torch) and for the keras.ops path.
        rows, cols = shape
        n = max(1, rows * cols // 3)
        indices = kernel_indices(frequency_locations(cols, rows, n, seed=3))
        rng = np.random.default_rng(1)
        upstream = rng.normal(size=shape).astype("float32")
        coefficients = keras.Variable(rng.normal(size=n).astype("float32"))
        plan = spectral_plan(indices, shape)

        def loss():
            delta = delta_fn(coefficients.value, plan, shape, 7.0)
            return ops.sum(delta * ops.convert_to_tensor(upstream))

        expected = 7.0 * np.fft.ifft2(upstream).real[indices[:, 0], indices[:, 1]]
        self.assertAllClose(
            gradient(loss, coefficients), expected, atol=1e-5, rtol=1e-7
        )
        self.assertAllClose(
            ops.convert_to_numpy(delta_fn(coefficients.value, plan, shape, 7.0)),
            _numpy_delta(ops.convert_to_numpy(coefficients), indices, shape, 7.0),
            atol=1e-5,
            rtol=1e-7,
        )

    @parameterized.named_parameters(
        named_product(
            _shapes((6, 10), (7, 9), (16, 16), (9, 6), (5, 5)),
            delta_fn=["spectral_delta", "ops_delta_from_plan"],
            row_zero_mirror_column=[True, False],
        )
    )
    def test_delta_values_at_edge_and_nyquist_locations(
        self, shape, delta_fn, row_zero_mirror_column
    ):
        rows, cols = shape
        indices = _edge_indices(
            rows, cols, rows * cols // 4, rows * cols, row_zero_mirror_column
        )
        cells = set(map(tuple, indices.tolist()))
        self.assertLessEqual(
            {(0, 0), (0, 1), (1, 0), (rows // 2, 0), (rows - 1, cols - 1)}, cells
        )
        self.assertLessEqual({(1, cols // 2), (rows // 2, cols // 2)}, cells)
        self.assertEqual((0, cols - cols // 2) in cells, row_zero_mirror_column)
        coefficients = np.random.default_rng(7).normal(size=len(indices))
        coefficients = coefficients.astype("float32")
        scaling = 3.5
        if delta_fn == "spectral_delta":
            delta = spectral_delta(coefficients, indices, shape, scaling)
        else:
            plan = spectral_plan(indices, shape)
            delta = ops_delta_from_plan(coefficients, plan, shape, scaling)
        dense = np.zeros(shape, dtype=np.float64)
        dense[indices[:, 0], indices[:, 1]] = coefficients
        expected = np.real(np.fft.ifft2(dense)) * scaling
        self.assertGreater(np.abs(expected).max(), 0.1)
        self.assertAllClose(
            ops.convert_to_numpy(delta), expected, atol=1e-5 * scaling, rtol=0
        )


class SpectralMatmulTest(testing.TestCase):
    """`x @ delta_W` and its gradients against numpy's FFT, edge bins included."""

    @parameterized.named_parameters(
        named_product(
            _shapes((6, 9), (8, 8), (7, 4), (9, 16)),
            matmul=["spectral_matmul", "ops_spectral_matmul"],
        )
    )
    def test_value_and_gradients_match_numpy(self, shape, matmul):
        matmul = {
            "spectral_matmul": spectral_matmul,
            "ops_spectral_matmul": ops_spectral_matmul,
        }[matmul]
        indices = _edge_indices(*shape, extra=7, seed=5)
        plan = activation_plan(indices, shape)
        rng = np.random.default_rng(1)
        c = rng.normal(size=len(indices)).astype("float32")
        x = rng.normal(size=(5, shape[0])).astype("float32")
        w = rng.normal(size=(5, shape[1])).astype("float32")
        scaling = 2.5
        delta = _numpy_delta(c, indices, shape, scaling)
        result = ops.convert_to_numpy(matmul(x, c, plan, shape, scaling))
        self.assertAllClose(result, x @ delta, atol=1e-5, rtol=1e-5)
        self.assertGreater(np.abs(x @ delta).max(), 0.1)

        inputs, values = keras.Variable(x), keras.Variable(c)

        def loss():
            product = matmul(inputs, values, plan, shape, scaling)
            return ops.sum(ops.multiply(product, ops.convert_to_tensor(w)))

        # d/dx sum((x @ D) * w) = w @ D^T; d/dc_k = scaling * Re(ifft2(x^T w))
        # at the coefficient's cell (the DFT basis of cell k, summed).
        expected = scaling * np.fft.ifft2(x.T.astype("float64") @ w).real
        self.assertAllClose(gradient(loss, inputs), w @ delta.T, atol=1e-5, rtol=1e-5)
        self.assertAllClose(
            gradient(loss, values),
            expected[indices[:, 0], indices[:, 1]],
            atol=1e-5,
            rtol=1e-5,
        )


class RowwiseSpectralMatmulTest(testing.TestCase):
    @parameterized.named_parameters(_shapes((6, 9), (8, 8), (7, 4)))
    def test_each_row_uses_its_own_table_row(self, shape):
        indices = _edge_indices(*shape, extra=5, seed=3)
        rng = np.random.default_rng(0)
        table = rng.normal(size=(4, len(indices))).astype("float32")
        table[0] = 0.0
        x = rng.normal(size=(5 * 3, shape[0])).astype("float32")
        row_ids = np.array([2, 0, 1, 3, 2], "int32")  # 5 rows of 3 tokens
        result = rowwise_spectral_matmul(
            x, table, row_ids, activation_plan(indices, shape), shape, 150.0
        )
        expected = np.stack(
            [
                x[t] @ _numpy_delta(table[row_ids[t // 3]], indices, shape, 150.0)
                for t in range(len(x))
            ]
        )
        self.assertAllClose(result, expected, atol=1e-5, rtol=1e-5)
        self.assertAllClose(result[3:6], np.zeros((3, shape[1])), atol=0)


class ChooseComputeTest(testing.TestCase):
    @parameterized.named_parameters(
        ("cpu", "adapter_layer_jax_cpu_llm.json", "cpu"),
        ("gpu", "adapter_layer_jax_h200.json", "gpu"),
    )
    def test_choose_compute_picks_the_measured_faster_path(self, results, device):
        cases = json.loads((MEASURED / results).read_text())["cases"]
        self.assertGreaterEqual(len(cases), 3)
        for case in cases:
            times = case["median_ms"]
            dense, activation = times["fourierft_dense"], times["fourierft_activation"]
            faster = "dense" if dense < activation else "activation"
            picked = choose_compute(
                case["tokens"],
                case["in_features"],
                case["out_features"],
                1000,
                device=device,
            )
            self.assertEqual(picked, faster, msg=(case["shape"], dense, activation))

    def test_choose_compute_builds_delta_w_once_in_a_compiled_loop(self):
        # One token against a large layer: per call, activation is cheaper.
        self.assertEqual(
            choose_compute(1, 4096, 4096, 1000, device="cpu"), "activation"
        )
        picked = choose_compute(
            1, 4096, 4096, 1000, device="cpu", in_compiled_loop=True
        )
        self.assertEqual(picked, "dense")

    def test_choose_compute_rejects_an_unknown_device(self):
        with pytest.raises(ValueError, match="device='tpu'"):
            choose_compute(512, 64, 64, 10, device="tpu")


class KernelViewTest(testing.TestCase):
    def test_kernel_view_is_public_in_the_math_module(self):
        from keras_fourierft import spectral

        view = spectral.kernel_view("btd,ndh->btnh", (12, 768, 64))
        self.assertEqual((view["in_features"], view["out_features"]), (768, 12 * 64))
        self.assertEqual(view["permutation"], [1, 0, 2])
