"""What the monthly gate costs as its sets grow (not a test): the gate's measuring (`gate.measure`: losses on the
month's held-out rows and on the regression set, the month's own questions answered (`new_facts`), the MCQ and
fact checks, each for the candidate and the live adapter) and its data check (`gate.data_signals`: retrieval and
the clause-by-clause reading of every new row), timed on SmolLM2-135M-Instruct (the embedded default, dequantised
as the monthly job trains it) at several multiples of a unit of 12 gate items (half the sabotage fixture's) and 12
rows of its good month, in one run.

    .venv/bin/python bench/gate_cost.py [--scales 1 2 4]

Saves bench/results/gate_cost.json: seconds per scale and a straight-line fit (seconds = fixed + per item x items).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
UNIT = 12  # gate items, and rows of the month, at scale 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scipy.stats import linregress

    from medloop.continual import gate
    from medloop.continual.mcq import load_mcq
    from medloop.testing import SABOTAGE, make_adapter, smollm2_folder
    from results import sample_retriever, save

    settings, retriever = sample_retriever("medloop-gate-cost-")
    home = settings.home
    base = smollm2_folder(home / "smollm2")
    candidate, live = (make_adapter(base, home / name, seed) for seed, name in enumerate(("candidate", "live"), 1))
    fixture = json.loads(SABOTAGE.read_text())
    mcq_file = home / "mcq.jsonl"
    mcq_file.write_text("".join(json.dumps(item) + "\n" for item in fixture["mcq"]))
    items = load_mcq(mcq_file)[:UNIT]
    rows = [r["messages"] for r in fixture["months"]["good1"]][:UNIT]

    runs = []
    for scale in args.scales:
        mcq, month = items * scale, rows * scale
        t0 = time.perf_counter()
        gate.measure(str(base), candidate, live, heldout=month, regression=month, new=month, quantize=False,
                     mcq_items=mcq,
                     retriever=retriever, k=settings.serving.evidence_k)
        measured = time.perf_counter() - t0
        t0 = time.perf_counter()
        gate.data_signals(month, retriever, settings.serving.evidence_k)
        data = time.perf_counter() - t0
        runs.append({"scale": scale, "gate_items": len(mcq), "heldout_rows": len(month), "regression_rows": len(month),
                     "new_rows": len(month),
                     "measure_s": round(measured, 1), "data_check_s": round(data, 1)})
        print(f"x{scale}: {len(mcq)} gate items, {len(month)} held-out, regression and new rows: measuring "
              f"{measured:.1f} s, data check {data:.1f} s", flush=True)
    fits = {}
    if len(runs) > 1:
        for key in ("measure_s", "data_check_s"):
            fit = linregress([r["gate_items"] for r in runs], [r[key] for r in runs])
            fits[key] = {"fixed_s": round(fit.intercept, 1), "per_item_s": round(fit.slope, 3)}
    save("gate_cost", {"model": "SmolLM2-135M-Instruct (dequantised, plain LoRA)", "scales": args.scales,
                       "unit": "one gate item with one held-out, one regression and one new row"},
         {"runs": runs, "fit": fits})


if __name__ == "__main__":
    main()
