"""`medloop search` wall time, a fresh process per call as a user runs it, on the sample index.

Side by side in one run: the multilingual default (USE v3 in numpy, with the dictionary bridge), the English
embedder through the ONNX export `medloop ingest` leaves next to the index (the default before), and the English
embedder through sentence-transformers (what every call paid before the export: importing it takes seconds).
Prints the ratios and saves bench/results/search.json.

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
from medloop.config import ENGLISH_EMBEDDER, MULTILINGUAL_EMBEDDER  # noqa: E402
from results import save  # noqa: E402

QUESTIONS = {"zh": "一般高血压患者血压应控制在多少以下",
             "en": "How long should dual antiplatelet therapy last after ACS?"}


def medloop(home: Path, embedder: str, *args: str) -> float:
    env = {**os.environ, "MEDLOOP_HOME": str(home), "MEDLOOP_RETRIEVAL__EMBEDDER": embedder, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medloop.cli", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    guidelines = str(resources.files("medloop").joinpath("data/guidelines"))
    homes = {embedder: Path(tempfile.mkdtemp(prefix="medloop-search-")) for embedder in (MULTILINGUAL_EMBEDDER,
                                                                                         ENGLISH_EMBEDDER)}
    for embedder, home in homes.items():
        medloop(home, embedder, "ingest", guidelines)
    exported = next((homes[ENGLISH_EMBEDDER] / "index" / "query-encoder").iterdir())
    figures = {}
    sides = {"multilingual": MULTILINGUAL_EMBEDDER, "english-onnx": ENGLISH_EMBEDDER,
             "english-sentence-transformers": ENGLISH_EMBEDDER}
    for side, embedder in sides.items():
        if side == "english-sentence-transformers":
            shutil.move(exported, exported.with_name("off"))
        for lang, question in QUESTIONS.items():
            times = [medloop(homes[embedder], embedder, "search", question, "--json") for _ in range(args.runs)]
            figures[f"{side}/{lang}"] = {"median_s": round(statistics.median(times), 2),
                                         "runs": [round(t, 2) for t in times]}
            runs = ", ".join(f"{t:.2f}" for t in times)
            print(f"{side:30s} {lang}: median {statistics.median(times):.2f} s  ({runs})")
    for lang in QUESTIONS:
        for side in ("english-onnx", "english-sentence-transformers"):
            ratio = figures[f"multilingual/{lang}"]["median_s"] / figures[f"{side}/{lang}"]["median_s"]
            figures[f"multilingual_over_{side}/{lang}"] = round(ratio, 2)
            print(f"{lang}: the multilingual default takes {ratio:.2f}x the time of {side}")
    save("search", {"runs": args.runs, "questions": QUESTIONS}, figures)
    for home in homes.values():
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
