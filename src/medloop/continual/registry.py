"""Adapter registry: versions with their records, and one atomic pointer to the live version.

adapters/
  v1/ v2/ ...        adapter files (from the training recipe) + record.json
  live.json          {"version", "path", "history": [earlier live versions]}: replaced atomically
  regression.jsonl   the fixed regression set, grown by each run's held-out data
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import psutil

from medloop.atomic import failpoint, write_text_atomic


class Status(StrEnum):
    TRAINING = "training"
    CANDIDATE = "candidate"  # trained and gated, not (yet) live
    LIVE = "live"
    REJECTED = "rejected"  # the gate said no
    RETIRED = "retired"  # was live, replaced
    FAILED = "failed"  # the run crashed or was killed


@dataclass
class AdapterRecord:
    version: str
    path: str
    parent: str | None
    status: Status
    created: str
    metrics: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)
    pid: int | None = None  # the training process, while status is "training"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))


class AdapterRegistry:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def live_file(self) -> Path:
        return self.root / "live.json"

    @property
    def regression_file(self) -> Path:
        return self.root / "regression.jsonl"

    @property
    def serving_file(self) -> Path:
        return self.root / "serving.json"

    def mark_serving(self, version: str, ok: bool, detail: str) -> None:
        """What the running server last said about loading `version`: promoted is not yet live until it is."""
        write_json_atomic(self.serving_file, {"version": version, "ok": ok, "detail": detail, "time": _now()})

    def serving(self) -> dict:
        return json.loads(self.serving_file.read_text()) if self.serving_file.exists() else {}

    def pending_hot_load(self) -> AdapterRecord | None:
        """The live version when the server has not confirmed loading it (a failed or missed hot-load)."""
        live, serving = self.live(), self.serving()
        if live is None or (serving.get("version") == live.version and serving.get("ok")):
            return None
        return live

    def shown_status(self, record: AdapterRecord) -> str:
        if record.status == Status.LIVE and self.pending_hot_load() is not None:
            return f"promoted, not live ({self.serving().get('detail') or 'not loaded by the server yet'})"
        return str(record.status)

    def _pointer(self) -> dict:
        return json.loads(self.live_file.read_text()) if self.live_file.exists() else {}

    def _read(self, path: Path, live_version: str | None) -> AdapterRecord:
        record = AdapterRecord(**json.loads(path.read_text()))
        record.status = Status(record.status)
        # The pointer is the truth; a record's own status may lag it after a crash mid-promotion.
        if record.version == live_version:
            record.status = Status.LIVE
        elif record.status == Status.LIVE:
            record.status = Status.RETIRED
        return record

    def versions(self) -> list[AdapterRecord]:
        live = self._pointer().get("version")
        records = [self._read(p, live) for p in self.root.glob("v*/record.json")]
        return sorted(records, key=lambda r: int(r.version[1:]))

    def get(self, version: str) -> AdapterRecord:
        path = self.root / version / "record.json"
        if not path.exists():
            known = ", ".join(r.version for r in self.versions()) or "none"
            raise KeyError(f"no adapter version '{version}' (known: {known})")
        return self._read(path, self._pointer().get("version"))

    def save(self, record: AdapterRecord) -> None:
        write_json_atomic(self.root / record.version / "record.json", asdict(record))

    def new_version(self, parent: str | None, manifest: dict) -> AdapterRecord:
        numbers = [int(p.name[1:]) for p in self.root.glob("v*") if p.name[1:].isdigit()]
        version = f"v{max(numbers, default=0) + 1}"
        (self.root / version).mkdir()
        record = AdapterRecord(version, str((self.root / version).resolve()), parent, Status.TRAINING, _now(),
                               manifest=manifest, pid=os.getpid())
        self.save(record)
        return record

    def live(self) -> AdapterRecord | None:
        version = self._pointer().get("version")
        return self.get(version) if version else None

    def _history(self) -> list[str]:
        return self._pointer().get("history", [])

    def promote(self, version: str) -> AdapterRecord:
        record = self.get(version)
        if record.status in {Status.TRAINING, Status.FAILED}:
            raise ValueError(f"{version} is {record.status}: only a finished adapter can go live")
        old = self.live()
        history = self._history()
        if old is not None and old.version != version:
            history = [*history, old.version]
        # The pointer first: it alone decides what serves; the records follow it.
        failpoint("promote-pointer")
        write_json_atomic(self.live_file, {"version": version, "path": record.path, "history": history})
        failpoint("promote-records")
        if old is not None and old.version != version:
            old.status = Status.RETIRED
            self.save(old)
        record.status = Status.LIVE
        self.save(record)
        return record

    def rollback(self) -> AdapterRecord:
        """Back to the version that was live before this one."""
        history = self._history()
        current = self.live()
        if not history or current is None:
            raise ValueError("nothing to roll back to")
        previous = self.get(history[-1])
        write_json_atomic(self.live_file, {"version": previous.version, "path": previous.path,
                                           "history": history[:-1]})
        current.status, previous.status = Status.RETIRED, Status.LIVE
        self.save(current)
        self.save(previous)
        return previous

    def clean_stale(self) -> list[str]:
        """Runs killed mid-training leave a 'training' version whose process is gone: mark it failed."""
        cleaned = []
        for record in self.versions():
            if record.status == Status.TRAINING and not _alive(record.pid):
                record.status = Status.FAILED
                record.decision = {"reason": "training process ended without finishing (crash or kill)"}
                self.save(record)
                shutil.rmtree(Path(record.path) / "checkpoints", ignore_errors=True)
                cleaned.append(record.version)
        return cleaned


def served_live(adapters_dir: Path, name: str, adapters: dict[str, str]):
    """What a starting server takes from the registry: `adapters` with the live version under `name` (unless
    given), the registry version of each adapter it added (for `/v1/models`), and the status function `/metrics`
    reports it with (live version, server confirmed loading it)."""
    if not adapters_dir.exists():
        return adapters, {}, None
    registry = AdapterRegistry(adapters_dir)
    live = registry.live()
    versions = {}
    if live is not None and name not in adapters:
        adapters, versions = {name: live.path, **adapters}, {name: live.version}

    def status() -> tuple[str | None, bool]:
        current = registry.live()
        return (current.version, registry.pending_hot_load() is None) if current else (None, True)

    return adapters, versions, status


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:  # a zombie (killed, not yet reaped by its parent) is not alive for our purposes
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
