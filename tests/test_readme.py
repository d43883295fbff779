"""The generated figures of README.md and docs/ are the saved bench results, not typed numbers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pages_match_bench_results():
    check = subprocess.run([sys.executable, str(ROOT / "bench" / "readme.py"), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, f"{check.stderr.strip()}: run python bench/readme.py"
