"""The scheduler service: APScheduler 3 with a persistent SQLite job store in the data home.

Schedules survive restarts (the job store keeps each job's next run time); coalescing folds missed
runs into one, one instance per job, and a misfire grace period lets a briefly-down service catch up.
Each run's outcome goes into a `job_runs` table beside the job store, for `medloop scheduler status`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import signal
import sqlite3
import threading
import traceback
from collections.abc import Iterator

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from medloop.config import Settings
from medloop.continual.registry import AdapterRegistry
from medloop.errors import UserError
from medloop.knowledge.ingest import disk_full
from medloop.locks import exclusive

log = logging.getLogger("medloop.scheduler")
JOBS = ("ingest", "retrain")
KEEP_RUNS = 500
_unrecorded: list[tuple] = []  # outcomes the job_runs table could not take (a full disk): written with the next


class SchedulerRunning(UserError):
    """Another scheduler serves this data home."""


@contextlib.contextmanager
def _runs_db(settings: Settings) -> Iterator[sqlite3.Connection]:
    """The job_runs table: committed and closed when the block ends."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(settings.scheduler_db, timeout=30)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS job_runs (job TEXT, started TEXT, finished TEXT, outcome TEXT,"
                   " detail TEXT)")
        with db:
            yield db


def run_job(name: str) -> dict:
    """Run one job now and record its outcome. Module-level, so the job store can reference it by name."""
    from medloop.continual import ingest_inbox, retrain

    if name not in JOBS:
        raise ValueError(f"unknown job '{name}': choose {' or '.join(JOBS)}")
    settings = Settings()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        result = ingest_inbox(settings) if name == "ingest" else retrain(settings, log=log.info)
    except Exception as e:  # noqa: BLE001 - recorded; the service keeps its schedule
        error = f"no space left on the device while writing {getattr(e, 'filename', None) or settings.home}" \
            if disk_full(e) else f"{type(e).__name__}: {e}"
        result = {"outcome": "error", "error": error, "trace": traceback.format_exc()[-2000:]}
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _unrecorded.append((name, started, finished, result.get("outcome"), json.dumps(result, default=str)))
    try:
        with _runs_db(settings) as db:
            db.executemany("INSERT INTO job_runs VALUES (?,?,?,?,?)", _unrecorded)
            # the ingest job polls every few seconds: keep the latest runs, not every look into an empty inbox
            db.execute("DELETE FROM job_runs WHERE job=? AND rowid NOT IN (SELECT rowid FROM job_runs WHERE job=?"
                       " ORDER BY rowid DESC LIMIT ?)", (name, name, KEEP_RUNS))
        _unrecorded.clear()
    except sqlite3.Error as e:  # a full disk: the outcome is logged now and recorded with a later run
        log.error("%s: %s (not recorded yet: %s; kept for the next run)", name, result.get("outcome"), e)
    log.info("%s: %s", name, result.get("outcome"))
    return result


def make_scheduler(settings: Settings) -> BackgroundScheduler:
    settings.home.mkdir(parents=True, exist_ok=True)
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{settings.scheduler_db.resolve()}")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone="UTC",
    )


def ensure_jobs(scheduler, settings: Settings) -> None:
    """Add the jobs the first time; later starts keep the stored ones (and their next run times), unless the
    configured schedule changed."""
    triggers = {
        "ingest": IntervalTrigger(seconds=settings.loop.ingest_poll_seconds, timezone="UTC"),
        "retrain": CronTrigger.from_crontab(settings.loop.retrain_cron, timezone="UTC"),
    }
    for name, trigger in triggers.items():
        job = scheduler.get_job(name)
        if job is not None and str(job.trigger) == str(trigger):
            continue
        scheduler.add_job(run_job, trigger, args=[name], id=name, name=name, replace_existing=True)


def start(settings: Settings, on_ready=None) -> None:
    """Foreground service; SIGTERM or SIGINT stops it cleanly after the running job. One per data home: a second
    one would run every job twice."""
    with exclusive(settings.home / ".scheduler.lock") as held:
        if not held:
            raise SchedulerRunning(f"another scheduler is running on {settings.home}: stop it first")
        _run(settings, on_ready)


def _run(settings: Settings, on_ready) -> None:
    scheduler = make_scheduler(settings)
    scheduler.start(paused=True)
    ensure_jobs(scheduler, settings)
    stopping = threading.Event()

    def stop(signum, frame):
        log.info("stopping on signal %s", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.resume()
    if on_ready:
        on_ready(scheduler)
    stopping.wait()
    scheduler.shutdown(wait=True)


def status(settings: Settings) -> list[dict]:
    scheduler = make_scheduler(settings)
    scheduler.start(paused=True)
    try:
        jobs = {j.id: j for j in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)
    rows = []
    with _runs_db(settings) as db:
        for name in JOBS:
            last = db.execute("SELECT started, finished, outcome, detail FROM job_runs WHERE job=? ORDER BY rowid"
                              " DESC LIMIT 1", (name,)).fetchone()
            job = jobs.get(name)
            rows.append({
                "job": name,
                "schedule": str(job.trigger) if job else "not scheduled (run `medloop scheduler start`)",
                "next_run": job.next_run_time.isoformat() if job and job.next_run_time else None,
                "last_started": last[0] if last else None,
                "last_outcome": last[2] if last else None,
                "last_detail": json.loads(last[3]) if last else None,
            })
    pending = AdapterRegistry(settings.adapters_dir).pending_hot_load() if settings.adapters_dir.exists() else None
    if pending is not None:  # promoted, not live: visible here until a later poll loads it
        serving = AdapterRegistry(settings.adapters_dir).serving()
        rows.append({"job": "hot-load", "schedule": "retried on every ingest poll", "next_run": None,
                     "last_started": serving.get("time"), "last_outcome": f"{pending.version} promoted, not live",
                     "last_detail": serving})
    return rows
