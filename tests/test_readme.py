"""The README's generated figures are the saved bench results, not typed numbers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_figures_match_bench_results():
    check = subprocess.run([sys.executable, str(ROOT / "bench" / "readme.py"), "--check"], capture_output=True)
    assert check.returncode == 0, "README.md is behind bench/results: run python bench/readme.py"
