"""`medloop search` wall time, a fresh process per call as a user runs it, on the sample index.

Side by side: the question embedded by sentence-transformers (what every call paid before: importing it takes
seconds) and by the ONNX export that `medloop ingest` leaves next to the index. A Chinese question on the
default English-only embedder needs no embedding at all. Prints the ratio and saves bench/results/search.json.

    python bench/search.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import save  # noqa: E402

QUESTIONS = {"zh": "一般高血压患者血压应控制在多少以下",
             "en": "How long should dual antiplatelet therapy last after ACS?"}


def medloop(home: Path, *args: str) -> float:
    env = {**os.environ, "MEDLOOP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medloop.cli", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="medloop-search-"))
    guidelines = str(resources.files("medloop").joinpath("data/guidelines"))
    medloop(home, "ingest", guidelines)
    exported = next((home / "index" / "query-encoder").iterdir())
    figures = {}
    for mode in ("sentence-transformers", "onnx"):
        if mode == "sentence-transformers":
            shutil.move(exported, exported.with_name("off"))
        else:
            shutil.move(exported.with_name("off"), exported)
        for lang, question in QUESTIONS.items():
            times = [medloop(home, "search", question, "--json") for _ in range(args.runs)]
            figures[f"{mode}/{lang}"] = {"median_s": round(statistics.median(times), 2),
                                         "runs": [round(t, 2) for t in times]}
            runs = ", ".join(f"{t:.2f}" for t in times)
            print(f"{mode:22s} {lang}: median {statistics.median(times):.2f} s  ({runs})")
    for lang in QUESTIONS:
        ratio = figures[f"sentence-transformers/{lang}"]["median_s"] / figures[f"onnx/{lang}"]["median_s"]
        figures[f"speedup/{lang}"] = round(ratio, 2)
        print(f"{lang}: {ratio:.2f}x faster with the exported encoder")
    save("search", {"runs": args.runs, "questions": QUESTIONS}, figures)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
