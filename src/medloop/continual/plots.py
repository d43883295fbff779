"""The loop's picture: each adapter version's gate signals and decision over the months (`medloop adapters plot`)."""

from __future__ import annotations

from pathlib import Path

from medloop.continual.registry import AdapterRecord, AdapterRegistry


def plot_loop(registry: AdapterRegistry, out: Path) -> Path:
    """What the gate saw at each retraining: the candidate's eval-loss change against the adapter it had to
    beat, on held-out new data (must go down) and on the regression set (may rise at most the tolerance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in registry.versions() if r.decision.get("signals")]
    if not records:
        raise ValueError("no gated versions yet: run `medloop scheduler run retrain` first")

    def change(r: AdapterRecord, key: str) -> float:
        d = r.decision["signals"].get(key, {})
        return 100 * (d["candidate"] / d["live"] - 1) if d.get("candidate") is not None and d.get("live") else 0.0

    xs = range(len(records))
    width = 0.38
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    new = [change(r, "new_data_loss") for r in records]
    reg = [change(r, "regression_loss") for r in records]
    ax.bar([x - width / 2 for x in xs], new, width, label="held-out new data (must fall)", color="#4C72B0")
    ax.bar([x + width / 2 for x in xs], reg, width, label="regression set (may rise ≤ tolerance)", color="#DD8452")
    tolerance = 100 * records[-1].decision["rules"]["tolerance"]
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(tolerance, color="#DD8452", linestyle="--", linewidth=0.8, label=f"tolerance +{tolerance:.0f}%")
    ax.set_xticks(list(xs), [f"{r.version}\n{r.status}" for r in records])
    ax.set_ylabel("candidate vs live eval loss (%)")
    ax.set_title("medloop: each retraining, gated")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
