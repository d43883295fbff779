"""`medloop`: one verb per stage of the life cycle, each a thin shell over one function of its room.

The app and its groups are made here; each group's commands live in a module of their own (knowledge: ingest,
search, index; serve: serve, demo; train; loop: scheduler, adapters; evaluate: eval). Errors a user can act on
(`medloop.errors.UserError`, settings that do not validate, a full disk) are said in one line by `main`."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Annotated

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medloop.config import Settings
from medloop.errors import UserError

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


def main() -> None:
    """`medloop`: the app, with every error a user can act on said in one line (exit 1), never a traceback."""
    import sys

    from pydantic import ValidationError

    from medloop.knowledge.ingest import disk_full

    try:
        app()
    except UserError as e:
        console.print(f"error: {e}", markup=False, highlight=False, style="red",
                      soft_wrap=True)
        sys.exit(1)
    except ValidationError as e:  # the settings (environment or medloop.toml)
        for err in e.errors():
            where = ".".join(map(str, err["loc"])) or e.title
            console.print(f"error: setting {where}: {err['msg']}", markup=False, highlight=False, style="red",
                      soft_wrap=True)
        sys.exit(1)
    except Exception as e:
        if not disk_full(e):
            raise
        where = getattr(e, "filename", None) or Settings.model_construct().home
        console.print(f"error: no space left on the device while writing {where}: free some space and run the "
                      "command again (what was half-written is not kept; the rerun completes it)",
                      markup=False, highlight=False, style="red",
                      soft_wrap=True)
        sys.exit(1)



from medloop.cli import evaluate, knowledge, loop, serve, train  # noqa: E402,F401  (their commands register on app)
