"""FourierFT under `tf.distribute.MirroredStrategy` on 2 logical CPU devices.

TensorFlow's logical devices must be configured before it initializes, so
the runs happen in one child process (`tests/mirrored_strategy_run.py`),
with a time limit, and these tests check its report.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
SCRIPT = ROOT / "tests" / "mirrored_strategy_run.py"

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute runs on the TensorFlow backend (the suite's TF leg)",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("mirrored")
    path = work / "report.json"
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(path.read_text())


def _case(report, name):
    case = report[name]
    assert "error" not in case, case.get("error")
    return case


def test_enabled_inside_the_scope_trains_like_one_device(report):
    single = _case(report, "single_device")
    mirrored = _case(report, "inside_scope")
    assert mirrored["replicas"] == 2
    assert mirrored["kinds"] == ["MirroredVariable"]
    expected = np.array(single["spectra"])
    got = np.array(mirrored["spectra"])
    assert expected.shape == got.shape == (4 * 64,)
    # Training moved the coefficients far more than the tolerance.
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mirrored["head"], single["head"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-5)
    assert single["losses"][-1] < single["losses"][0]


def test_checkpoint_and_saved_adapter_under_the_strategy(report):
    mirrored = _case(report, "inside_scope")
    first = np.array(mirrored["checkpoints"]["1"])
    last = np.array(mirrored["checkpoints"]["2"])
    assert np.abs(last - first).max() > 1e-4
    np.testing.assert_array_equal(last, mirrored["spectra"])
    np.testing.assert_array_equal(mirrored["saved"], mirrored["spectra"])
    assert mirrored["merge_error"] < 1e-5


def test_enabled_outside_the_scope_joins_the_models_strategy(report):
    # Fails before the fix: the coefficients were plain variables, and
    # `fit` failed in the optimizer's distributed update.
    single = _case(report, "single_device")
    outside = _case(report, "enabled_outside_scope")
    assert outside["kinds"] == ["MirroredVariable"]
    np.testing.assert_allclose(
        outside["spectra"], single["spectra"], rtol=1e-4, atol=1e-7
    )


def test_adapter_file_loads_into_a_mirrored_model_outside_its_scope(report):
    mirrored = _case(report, "inside_scope")
    loaded = _case(report, "adapter_loaded_outside_scope")
    assert loaded["kinds"] == ["MirroredVariable"]
    np.testing.assert_array_equal(loaded["spectra"], mirrored["saved"])


@pytest.mark.parametrize(
    "case, cause, advice",
    [
        (
            "built_outside_scope",
            "built outside any tf.distribute strategy",
            "build (or load) the model inside `strategy.scope()`",
        ),
        (
            "other_strategy",
            "that is not the current strategy",
            "or outside any scope",
        ),
    ],
    ids=["built_outside_scope", "other_strategy"],
)
def test_enabling_under_a_strategy_that_does_not_own_the_model(
    report, case, cause, advice
):
    # Fails before the fix: enabling went through, and `fit` failed later
    # inside Keras (or on mixed strategies).
    refused = _case(report, case)
    assert refused["message"] is not None, "enable_fourierft did not refuse"
    assert cause in refused["message"] and advice in refused["message"]
    assert "Nothing was changed" in refused["message"]
    assert refused["adapted"] == 0
    assert refused["same_classes"] and refused["same_weights"]
    assert refused["trainable"] == refused["weights"] > 0
