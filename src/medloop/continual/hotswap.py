"""Hot-swapping a promoted adapter into the running server (over HTTP: the loop never imports serving), and
trying again when the server was down."""

from __future__ import annotations

import httpx

from medloop.config import Settings
from medloop.continual.registry import AdapterRecord, AdapterRegistry


def hot_load(settings: Settings, record: AdapterRecord) -> str:
    """Tell the running server to serve this version under the stable name; it keeps serving meanwhile.
    The answer is kept in the registry (serving.json): a version the server did not load stays
    "promoted, not live" and `retry_hot_load` tries again on every ingest poll."""
    key = settings.serving.admin_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    body = {"action": "load", "name": settings.loop.adapter_name, "path": record.path, "version": record.version}
    try:
        r = httpx.post(settings.loop.server_url.rstrip("/") + "/admin/adapters", json=body, headers=headers,
                       timeout=300)
        ok, detail = r.status_code == 200, "hot-loaded" if r.status_code == 200 else \
            f"server refused the adapter ({r.status_code}): {r.text[:200]}"
    except httpx.HTTPError as e:
        ok, detail = False, f"server not reachable ({type(e).__name__}): retried on every ingest poll"
    AdapterRegistry(settings.adapters_dir).mark_serving(record.version, ok, detail)
    return detail


def retry_hot_load(settings: Settings) -> str | None:
    """Hot-load the live version if the server has not confirmed it yet; None when nothing is pending."""
    if not settings.adapters_dir.exists():
        return None
    pending = AdapterRegistry(settings.adapters_dir).pending_hot_load()
    return hot_load(settings, pending) if pending is not None else None
