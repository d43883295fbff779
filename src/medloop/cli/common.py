"""What every verb module shares: the app and its command groups, the consoles, the progress bar and the settings.
Verb modules import it; `medloop.cli` imports the verb modules (so their commands register) and never the reverse."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medloop.config import Settings

app = typer.Typer(help="Keep a Qwen3 medical assistant current.", no_args_is_help=True, add_completion=False)
index_app = typer.Typer(help="The retrieval index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
scheduler_app = typer.Typer(help="The continual loop's scheduler service.", no_args_is_help=True)
app.add_typer(scheduler_app, name="scheduler")
adapters_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
eval_app = typer.Typer(help="Evaluation and comparison reports.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
train_app = typer.Typer(help="QLoRA fine-tuning.", invoke_without_command=True)
app.add_typer(train_app, name="train")
console = Console(stderr=True)
out = Console()
THIRD_PARTY_LOGGERS = ("bitsandbytes", "transformers", "sentence_transformers", "peft", "accelerate", "jieba")


VERBOSE = typer.Option("--verbose", "-v", help="show third-party warnings and progress bars (model loading, kernels)")


@app.callback()
def options(ctx: typer.Context, verbose: Annotated[bool, VERBOSE] = False) -> None:
    """Keep a Qwen3 medical assistant current."""
    if verbose:
        return
    if ctx.invoked_subcommand not in {"train", "scheduler"}:  # training keeps its own progress bar
        os.environ.setdefault("TQDM_DISABLE", "1")  # e.g. transformers' GGUF conversion, which ignores the above
    # Before any model library is imported: their import-time warnings and weight-loading bars are noise in
    # normal output (medloop's own progress bars stay).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # deprecation notices of the libraries' own internals (is_gradient_checkpointing, past_key_values): not ours
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in THIRD_PARTY_LOGGERS:  # these set a level of their own
        logging.getLogger(name).setLevel(logging.ERROR)
    # and any other library's warning, one a new release adds included: stderr carries medloop's own lines
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("medloop").setLevel(logging.INFO)  # shown where a handler takes it (the scheduler), else warnings


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def load_settings() -> Settings:
    """The deployment's settings (environment, medloop.toml, defaults): the one place every command reads them."""
    return Settings()
