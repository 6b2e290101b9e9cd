"""Smoke test of the main job: `examples/finetune_sentiment.py --quick`."""

import json
import pathlib
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "finetune_sentiment.py"


def _run(*args):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.tensorflow_only
def test_quick_run_writes_results_and_predicts(tmp_path):
    output = tmp_path / "out"
    printed = _run("--quick", "--output-dir", str(output))
    results = json.loads((output / "results.json").read_text())
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
    assert (output / "accuracy_vs_parameters.png").stat().st_size > 10_000
    assert "| fourierft |" in (output / "results.md").read_text()
    assert "| fourierft |" in printed
    predicted = _run("--output-dir", str(output), "--predict", "wonderful")
    assert "wonderful" in predicted and (
        "positive" in predicted or "negative" in predicted
    )


def test_predict_without_training_explains(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--output-dir", str(tmp_path), "--predict", "x"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Train first" in result.stderr
