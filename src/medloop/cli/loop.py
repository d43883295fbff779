"""`medloop scheduler` and `medloop adapters`: the continual loop and its registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medloop.cli.common import adapters_app, console, load_settings, out, scheduler_app


@scheduler_app.command("start")
def scheduler_start() -> None:
    """Run the scheduler in the foreground (poll the inbox, retrain monthly); Ctrl-C or SIGTERM stops it."""
    import logging

    from medloop.continual import scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()

    def ready(s):
        for job in s.get_jobs():
            out.print(f"{job.id}: {job.trigger}, next run {job.next_run_time}")

    scheduler.start(settings, on_ready=ready)


@scheduler_app.command("run")
def scheduler_run(job: Annotated[str, typer.Argument(help="ingest | retrain")]) -> None:
    """Run one job now, once."""
    import logging

    from medloop.continual import scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if job not in scheduler.JOBS:
        raise typer.BadParameter(f"unknown job '{job}': choose ingest or retrain")
    result = scheduler.run_job(job)
    out.print_json(json.dumps({k: v for k, v in result.items() if k != "trace"}, default=str, ensure_ascii=False))
    raise typer.Exit(1 if result.get("outcome") == "error" else 0)


@scheduler_app.command("status")
def scheduler_status() -> None:
    """Next run times and the last outcome of each job."""
    from medloop.continual import scheduler

    table = Table()
    for col in ("job", "schedule", "next run", "last run", "last outcome"):
        table.add_column(col)
    for row in scheduler.status(load_settings()):
        table.add_row(row["job"], row["schedule"], str(row["next_run"]), str(row["last_started"]),
                      str(row["last_outcome"]))
    out.print(table)


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version with its status and figures."""
    from medloop.continual import AdapterRegistry

    table = Table()
    for col in ("version", "status", "parent", "created", "train loss", "held-out loss", "data"):
        table.add_column(col)
    registry = AdapterRegistry(load_settings().adapters_dir)
    for r in registry.versions():
        counts = r.manifest.get("counts", {})
        held = r.metrics.get("heldout_loss_candidate")
        table.add_row(r.version, registry.shown_status(r), r.parent or "-", r.created,
                      f"{r.metrics['train_loss']:.4f}" if "train_loss" in r.metrics else "-",
                      f"{held:.4f}" if held is not None else "-",
                      f"{counts.get('train_total', '-')} samples")
    out.print(table)


@adapters_app.command("show")
def adapters_show(version: str) -> None:
    """One version's full record: data manifest, metrics, gate decision."""
    from dataclasses import asdict

    from medloop.continual import AdapterRegistry

    try:
        record = AdapterRegistry(load_settings().adapters_dir).get(version)
    except KeyError as e:
        console.print(f"[red]error[/] {e.args[0]}")
        raise typer.Exit(2) from e
    out.print_json(json.dumps(asdict(record), ensure_ascii=False, default=str))


def _promote_or_rollback(action: str, version: str | None = None) -> None:
    from medloop.continual import AdapterRegistry, hot_load

    settings = load_settings()
    registry = AdapterRegistry(settings.adapters_dir)
    try:
        record = registry.promote(version) if action == "promote" else registry.rollback()
    except (KeyError, ValueError) as e:
        console.print(f"[red]error[/] {e.args[0]}")
        raise typer.Exit(2) from e
    out.print(f"live: {record.version}; {hot_load(settings, record)}")


@adapters_app.command("plot")
def adapters_plot(out_file: Annotated[Path, typer.Argument(help="PNG to write")] = Path("loop.png")) -> None:
    """A picture of the loop: each version's gate figures (held-out and regression loss, decision)."""
    from medloop.continual.plots import plot_loop
    from medloop.continual.registry import AdapterRegistry

    try:
        out.print(f"loop metrics: {plot_loop(AdapterRegistry(load_settings().adapters_dir), out_file)}")
    except ValueError as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e


@adapters_app.command("promote")
def adapters_promote(version: str) -> None:
    """Make a version live (by hand) and hot-load it into the running server."""
    _promote_or_rollback("promote", version)


@adapters_app.command("rollback")
def adapters_rollback() -> None:
    """Make the previously live version live again, and hot-load it."""
    _promote_or_rollback("rollback")
