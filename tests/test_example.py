"""The guide, `examples/finetune_sentiment.py`: its data split, its size and
the public names it uses, and one `--quick` run end to end."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from examples import finetune_sentiment as guide

ROOT = pathlib.Path(__file__).parents[1]
GUIDE = ROOT / "examples" / "finetune_sentiment.py"
# The public names the guide may use: those the 1.0 API keeps unchanged.
STABLE_NAMES = {
    "enable_fourierft",
    "save_fourierft_weights",
    "load_fourierft_weights",
    "FourierFTCheckpoint",
    "merge_fourierft",
    "save_peft_adapter",
    "load_model",
}


def test_guide_is_guide_sized_and_uses_only_stable_public_names():
    source = GUIDE.read_text()
    assert len(source.splitlines()) <= 250
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "keras_fourierft"
    }
    assert used == STABLE_NAMES - {"load_model"}


def test_split_is_the_recorded_runs():
    recorded = json.loads(
        (ROOT / "docs" / "finetune_sentiment_results.json").read_text()
    )
    words, labels = guide.load_lexicon()
    # 7,519 lexicon entries, 6,817 of them with |mean rating| >= 0.5.
    assert len(words) == len(labels) == 6817
    assert set(np.unique(labels)) == {0, 1}
    parts = guide.split(words, labels)
    sizes = {name: len(part[1]) for name, part in parts.items()}
    assert sizes == recorded["splits"]
    again = guide.split(words, labels)
    for name, (part_words, part_labels) in parts.items():
        np.testing.assert_array_equal(again[name][0], part_words)
        np.testing.assert_array_equal(again[name][1], part_labels)
    # The three parts are the whole lexicon, each item once.
    together = np.concatenate([part[0] for part in parts.values()])
    np.testing.assert_array_equal(np.sort(together), np.sort(words))
    quick = guide.split(words, labels, quick=True)
    assert {name: len(part[1]) for name, part in quick.items()} == {
        "train": 512,
        "validation": 128,
        "test": 256,
    }
    np.testing.assert_array_equal(quick["train"][0], parts["train"][0][:512])
    np.testing.assert_array_equal(quick["test"][0], parts["test"][0][:256])


def _percent(line):
    return float(re.search(r"test accuracy ([\d.]+)%", line).group(1))


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_guide_quick_run_trains_saves_reloads_exports_and_merges(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [sys.executable, str(GUIDE), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    methods = {}
    for method in guide.METHODS:
        (line,) = [x for x in lines if x.startswith(f"{method}: test accuracy")]
        methods[method] = line
    assert "12,770 trainable parameters" in methods["fourierft"]
    assert methods["head"].endswith(", 770 trainable parameters")
    (reloaded,) = [x for x in lines if x.startswith("Reloaded ")]
    (merged,) = [x for x in lines if x.startswith("Merged: ")]
    # The reloaded adapter is the best epoch's: the trained model's accuracy.
    assert _percent(reloaded) == _percent(methods["fourierft"])
    assert abs(_percent(merged) - _percent(reloaded)) <= 0.5
    output = tmp_path / "outputs" / "finetune_sentiment_guide"
    fourierft = output / "fourierft"
    assert 0 < (fourierft / guide.COEFFICIENTS_FILE).stat().st_size < 100_000
    assert (fourierft / guide.BEST_FILE).stat().st_size > (
        fourierft / guide.COEFFICIENTS_FILE
    ).stat().st_size
    assert (output / "lora" / guide.LORA_FILE).stat().st_size > 10 * (
        fourierft / guide.COEFFICIENTS_FILE
    ).stat().st_size
    config = json.loads((output / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "FOURIERFT" and config["n_frequency"] == 1000
    assert (output / "peft" / "adapter_model.safetensors").is_file()
