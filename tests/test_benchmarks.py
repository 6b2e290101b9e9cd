"""Smoke tests of the benchmark scripts on the current backend (tiny sizes)."""

import json
import os
import pathlib
import subprocess
import sys

import keras

BENCHMARKS = pathlib.Path(__file__).parents[1] / "benchmarks"


def _run(script, *args, output):
    backend = keras.backend.backend()
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--backend", backend, *args]
        + ["--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, KERAS_BACKEND=backend),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(output.read_text())


def test_train_step_reports_ratios(tmp_path):
    data = _run(
        "train_step.py",
        "--quick",
        "--no-memory",
        "--methods",
        "lora",
        "fourierft",
        "--batch",
        "2",
        "--sequence-length",
        "8",
        output=tmp_path / "train.json",
    )
    assert data["backend"] == keras.backend.backend()
    assert data["results"]["fourierft"]["trainable_params"] == 12 * 1000 + 770
    assert data["fourierft_over_lora"] > 0
    paired = data["fourierft_over_lora_paired"]
    assert paired["q1"] <= paired["median"] <= paired["q3"]


def test_adapter_layer_reports_ratios(tmp_path):
    data = _run(
        "adapter_layer.py",
        "--quick",
        "--shapes",
        "minilm",
        output=tmp_path / "layer.json",
    )
    (case,) = data["cases"]
    assert case["in_features"] == case["out_features"] == 384
    assert case["tokens"] == 32 * 64
    assert set(case["median_ms"]) == {
        "frozen",
        "lora",
        "fourierft",
        "fourierft_dense",
        "fourierft_activation",
    }
    assert case["fourierft_over_lora"] > 0
    assert case["auto_over_best_path"] > 0
