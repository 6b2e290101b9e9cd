"""FourierFT on Keras's distribution engines (JAX): devices and processes.

JAX fixes its devices when it starts, so the runs on several (virtual CPU)
devices and processes happen in child processes (`distributed_worker.py`),
each with a timeout, and write their results into a temporary folder:

- DataParallel over 2 devices against one device;
- ModelParallel on a 2x2 mesh with KerasHub's Gemma layout map, both compute
  paths, against one device; a `.*coefficients` LayoutMap entry; bad layouts
  and models under another distribution;
- DataParallel over two processes joined by `jax.distributed.initialize`.

`keras.distribution` runs on JAX, so the module runs in the JAX leg of CI.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_fourierft
from keras_fourierft.adapters import _read_adapter_file
from tests import models

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution runs on the JAX backend; these tests run in the "
    "JAX leg of CI",
)

ROOT = Path(__file__).parent.parent
WORKER = Path(__file__).parent / "distributed_worker.py"
TIMEOUT_S = 400
PROCESS_TIMEOUT_S = 200
# The exit status of a process run that cannot join two processes (a jax
# without CPU collectives); see distributed_worker.py.
CANNOT_RUN = 3
TOLERANCE = 1e-4


def _environment():
    return dict(
        os.environ,
        KERAS_BACKEND="jax",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        TF_CPP_MIN_LOG_LEVEL="3",
    )


def _start(*args):
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environment(),
        cwd=ROOT,
    )


def _finish(children, timeout):
    """Waits for child processes; kills all of them on a timeout."""
    outputs = []
    try:
        for child in children:
            outputs.append(child.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for child in children:
            child.kill()
            child.communicate()
        pytest.fail(f"a distributed run took more than {timeout} s and was killed")
    return outputs


def _result(folder, name="result.json"):
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data- and model-parallel runs, started together."""
    folders = {
        mode: tmp_path_factory.mktemp(mode)
        for mode in ("data_parallel", "model_parallel")
    }
    children = [_start(mode, folder) for mode, folder in folders.items()]
    outputs = _finish(children, TIMEOUT_S)
    for child, output, mode in zip(children, outputs, folders, strict=True):
        assert child.returncode == 0, f"{mode} run failed:\n{output[-4000:]}"
    return {mode: (folder, _result(folder)) for mode, folder in folders.items()}


def _check(runs, mode, name):
    """One check's result; fails with the run's error if it raised."""
    result = runs[mode][1][name]
    if isinstance(result, dict) and "traceback" in result:
        pytest.fail(f"{mode}/{name} raised:\n{result['traceback']}")
    return result


def test_data_parallel_equals_one_device(runs):
    assert runs["data_parallel"][1]["devices"] == 2
    result = _check(runs, "data_parallel", "fit")
    # Replicated on both devices.
    assert result["coefficient_devices"] == [2, 2]
    assert result["coefficient_specs"] == ["P(None,)", "P(None,)"]
    assert result["coefficient_difference"] < TOLERANCE
    assert result["reload_output_difference"] < 1e-5


@pytest.mark.parametrize("compute", ["dense", "activation"])
def test_model_parallel_keeps_layouts_and_matches_one_device(runs, compute):
    result = _check(runs, "model_parallel", f"fit_{compute}")
    kernels = result["kernels_before"]
    # KerasHub's layout map sharded the kernels ...
    assert (
        kernels["decoder_block_0/attention/query/kernel"] == "P('model', 'batch', None)"
    )
    assert kernels["decoder_block_0/ffw_linear/kernel"] == "P('model', 'batch')"
    # ... and they keep that layout once adapted, trained and reloaded.
    for key in ("specs_after", "specs_trained", "specs_reloaded"):
        specs = result[key]
        assert {k: v for k, v in specs.items() if k in kernels} == kernels, key
        coefficients = {k: v for k, v in specs.items() if k.endswith("coefficients")}
        assert coefficients == {
            "decoder_block_0/attention/query/coefficients": "P(None,)",
            "decoder_block_0/attention/value/coefficients": "P(None,)",
        }, key
    assert result["output_difference"] < 1e-5
    assert result["coefficient_difference"] < TOLERANCE
    assert result["reload_output_difference"] < 1e-5


def test_layout_map_entry_shards_the_coefficients(runs):
    result = _check(runs, "model_parallel", "sharded_coefficients")
    coefficients = {
        k: v for k, v in result["specs_trained"].items() if k.endswith("coefficients")
    }
    assert set(coefficients.values()) == {"P('model',)"}
    assert len(coefficients) == 2
    assert result["coefficient_difference"] < TOLERANCE


@pytest.mark.parametrize("compute", ["dense", "activation"])
def test_sharded_fft_compiles_in_a_jax_training_step(runs, compute):
    # A jitted step through `stateless_call`, with the kernel laid out by
    # ModelParallel and the inputs sharded over their features. Before FFT
    # operands were pinned to row-major, XLA failed to run it: `RET_CHECK
    # failure (xla/backends/cpu/runtime/fft_thunk.cc:168)
    # LayoutUtil::IsMonotonicWithDim0Major(input_shape_.layout())`.
    result = _check(runs, "model_parallel", f"stateless_{compute}")
    assert result["kernel_spec"] == "P('model', 'batch')"
    assert result["gradient_difference"] <= 1e-6 * result["gradient_scale"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bad_layout_two_axes", "as ('model', None): a layout for 2 axes"),
        ("bad_layout_indivisible", "n_frequency=25 is not divisible by 2"),
    ],
)
def test_layout_that_cannot_apply_to_coefficients(runs, name, expected):
    result = _check(runs, "model_parallel", name)
    assert result["error"] is not None and expected in result["error"]
    assert "layout_map['.*coefficients'] = (None,)" in result["error"]
    assert result["untouched"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("built_without_distribution", "is on the single device"),
        ("built_under_data_parallel", "over the mesh {'batch': 4}"),
        ("enabled_without_distribution", "no distribution is current"),
    ],
)
def test_model_under_another_distribution(runs, name, expected):
    result = _check(runs, "model_parallel", name)
    assert result["error"] is not None and expected in result["error"]
    assert "distribution.scope()" in result["error"]
    assert result["untouched"]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_equal_one_process(runs, tmp_path):
    folder, _ = runs["data_parallel"]
    (tmp_path / "initial.npz").write_bytes((folder / "initial.npz").read_bytes())
    port = _free_port()
    children = [_start("process", rank, port, tmp_path) for rank in (0, 1)]
    outputs = _finish(children, PROCESS_TIMEOUT_S)
    codes = [child.returncode for child in children]
    if CANNOT_RUN in codes:
        reason = outputs[codes.index(CANNOT_RUN)].strip().splitlines()[-1]
        pytest.fail(
            f"{reason}: two processes cannot join; install the test extras "
            '(pip install -e ".[test,jax]"), whose jax has CPU collectives'
        )
    for rank, (code, output) in enumerate(zip(codes, outputs, strict=True)):
        assert code == 0, f"process {rank} failed:\n{output[-4000:]}"
    results = [_result(tmp_path, f"result_{rank}.json")["fit"] for rank in (0, 1)]
    for rank, result in enumerate(results):
        assert "traceback" not in result, result.get("traceback")
        assert result["process_index"] == rank
        assert result["process_count"] == 2 and result["global_devices"] == 2
    # Saved once, by process 0; process 1 returned without writing.
    assert [result["wrote"] for result in results] == [True, False]
    assert not (tmp_path / "adapter_process_1.weights.h5").exists()
    saved = _read_adapter_file(tmp_path / "adapter_process_0.weights.h5")
    with np.load(folder / "reference.npz") as reference:
        for layer in saved["layers"]:
            expected = reference[layer["path"].replace("/", "|")]
            np.testing.assert_allclose(layer["spectrum"], expected, atol=TOLERANCE)


def test_only_process_zero_writes(tmp_path, monkeypatch):
    import jax

    model = models.sequential()
    keras_fourierft.enable_fourierft(model, n_frequency=8, target_layer_names=["query"])
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    keras_fourierft.save_fourierft_weights(model, tmp_path / "a.weights.h5")
    keras_fourierft.save_peft_adapter(
        model, tmp_path / "peft", layer_map={"q": "query"}
    )
    assert list(tmp_path.iterdir()) == []
    # The arguments are checked on every process.
    with pytest.raises(ValueError, match="must end in"):
        keras_fourierft.save_fourierft_weights(model, tmp_path / "a.h5")
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    keras_fourierft.save_fourierft_weights(model, tmp_path / "a.weights.h5")
    assert (tmp_path / "a.weights.h5").exists()


def test_distributed_step_benchmark(tmp_path):
    output = tmp_path / "step.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed_step.py")]
        + ["--quick", "--num-layers", "1", "--hidden-dim", "16", "--num-heads"]
        + ["2", "--batch", "4", "--sequence-length", "8", "--n-frequency", "20"]
        + ["--output", str(output)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_environment(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(output.read_text())
    assert data["devices"] == 2
    assert set(data["median_ms"]) == {"one_device", "data_parallel"}
    assert data["data_parallel_over_one_device"] > 0


def test_layout_map_entry_checked_when_a_layer_gets_coefficients():
    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*coefficients"] = ("model", None)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    with distribution.scope():
        layer = keras_fourierft.FourierDense(4, n_frequency=6)
        with pytest.raises(ValueError, match="as \\('model', None\\): a layout for 2"):
            layer.build((None, 8))
        dense = keras.layers.Dense(4)
        dense.build((None, 8))
        with pytest.raises(ValueError, match="a layout for 2 axes"):
            keras_fourierft.adapt_layer(dense, n_frequency=6)
    assert type(dense) is keras.layers.Dense
    assert [v.name for v in dense.weights] == ["kernel", "bias"]
