"""The continual loop: scheduled ingestion, incremental QLoRA, promotion gate, adapter registry, hot-swap."""

from medloop.continual.loop import gate, hot_load, ingest_inbox, retrain
from medloop.continual.registry import AdapterRecord, AdapterRegistry

__all__ = ["AdapterRecord", "AdapterRegistry", "gate", "hot_load", "ingest_inbox", "retrain"]
