"""The prepared GPU run is a script a device gets for minutes: its code path is run here, on CPU with tiny shapes, so
the device never meets a bug a CPU could have shown."""

import json
import os
import subprocess
import sys

import pytest

from medloop.testing import REPO


@pytest.mark.slow
def test_the_gpu_run_works_end_to_end_as_a_dry_run(tmp_path):
    env = {**os.environ, "MEDLOOP_BENCH_RESULTS": str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run", "--wheels", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    training = json.loads((tmp_path / "training-gpu-dry-run.json").read_text())["figures"]
    assert {"seed", "trl", "recipe"} <= set(training), training
    serving = json.loads((tmp_path / "serving-gpu-dry-run.json").read_text())["figures"]
    assert serving["2_clients"]["tokens_per_s"] > 0 and "all parts done" in run.stdout
