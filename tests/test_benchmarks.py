"""Smoke tests of the benchmark scripts on the current backend (tiny sizes)."""

import json
import os
import pathlib
import subprocess
import sys

import keras
from keras.src import testing

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


class BenchmarkScriptTest(testing.TestCase):
    def test_train_step_reports_ratios(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
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
        self.assertEqual(data["backend"], keras.backend.backend())
        self.assertEqual(
            data["results"]["fourierft"]["trainable_params"], 12 * 1000 + 770
        )
        self.assertGreater(data["fourierft_over_lora"], 0)
        paired = data["fourierft_over_lora_paired"]
        self.assertLessEqual(paired["q1"], paired["median"])
        self.assertLessEqual(paired["median"], paired["q3"])

    def test_adapter_layer_reports_ratios(self):
        tmp_path = pathlib.Path(self.get_temp_dir())
        data = _run(
            "adapter_layer.py",
            "--quick",
            "--loss",
            "tanh",
            "--shapes",
            "minilm",
            output=tmp_path / "layer.json",
        )
        self.assertEqual(data["loss"], "tanh")
        (case,) = data["cases"]
        self.assertEqual(case["in_features"], case["out_features"])
        self.assertEqual(case["out_features"], 384)
        self.assertEqual(case["tokens"], 32 * 64)
        self.assertEqual(
            set(case["median_ms"]),
            {
                "frozen",
                "lora",
                "fourierft",
                "fourierft_dense",
                "fourierft_activation",
            },
        )
        self.assertGreater(case["fourierft_over_lora"], 0)
        self.assertGreater(case["auto_over_best_path"], 0)

    def test_adapter_layer_step_memory_of_one_method(self):
        # The child process `--peak-memory` runs per method: its steps hold
        # at least the 2048 x 384 float32 input gradient (3 MB).
        output = subprocess.run(
            [sys.executable, str(BENCHMARKS / "adapter_layer.py")]
            + ["--memory-of", "fourierft_activation", "--shapes", "minilm"],
            env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        peak = json.loads(output.strip().splitlines()[-1])["peak_step_mb"]
        self.assertGreater(peak, 2.9)
        self.assertLess(peak, 4096)
