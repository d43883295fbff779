"""The continual loop: scheduled ingestion, incremental QLoRA, promotion gate, adapter registry, hot-swap."""

from medloop.continual.hotswap import hot_load
from medloop.continual.inbox import ingest_inbox
from medloop.continual.monthly import gate, retrain
from medloop.continual.registry import AdapterRecord, AdapterRegistry

__all__ = ["AdapterRecord", "AdapterRegistry", "gate", "hot_load", "ingest_inbox", "retrain"]
