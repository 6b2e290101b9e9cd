"""`examples/serve_adapters.py --quick`: both parts end to end (the script
exits with an error when a mixed-batch row differs from its adapter alone)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "serve_adapters.py"


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_quick_run_serves_mixed_batches(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    models = ROOT / "outputs" / "models"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--model-dir", str(models)]
        + ["--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "5/5 rows generate what their adapter alone does" in out, out
    for task in ("polarity", "intensity"):
        match = re.search(task + r": (\d+) mixed-batch rows.*difference (\S+)", out)
        assert match and int(match[1]) > 0, out
        assert float(match[2]) <= 1e-4, out
    assert len(list(tmp_path.glob("*/*.weights.h5"))) == 4
    # The rows show both adapters and the base model.
    rows = re.findall(r"^row \d \[(\w+)\]", out, flags=re.M)
    assert rows == ["digits", "words", "base", "digits", "words"], out
