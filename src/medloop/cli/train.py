"""`medloop train`: a preset, then any TrainConfig field as a flag; `medloop train merge`."""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel

from medloop.cli.common import console, load_settings, out, train_app
from medloop.training.config import TrainConfig


def _options_from(model: type[BaseModel]):
    """Turn a pydantic model's fields into this command's flags (`lora_dropout` -> `--lora-dropout`,
    lists repeatable, booleans as `--x/--no-x`), so that a new field is a new flag with no list to keep in step.
    Every flag defaults to None, meaning "not given": the preset's value stands."""

    def decorate(fn):
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        for name, field in model.model_fields.items():
            flag = "--" + name.replace("_", "-")
            kind = field.annotation
            args = typing.get_args(kind)
            if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
                kind = next(a for a in args if a is not type(None))
            default = "" if field.is_required() else f" [default: {field.default}]"
            help_ = (field.description or "") + default
            if kind is bool:
                hint, option = bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help_, show_default=False)
            elif typing.get_origin(kind) is list:
                item = typing.get_args(kind)[0]
                hint, option = list[item] | None, typer.Option(flag, help=help_ + " (repeatable)", show_default=False)
            elif typing.get_origin(kind) is typing.Literal:
                choices = " | ".join(map(str, typing.get_args(kind)))
                hint, option = str | None, typer.Option(flag, help=f"{choices}{help_}", show_default=False)
            else:
                hint, option = kind | None, typer.Option(flag, help=help_, show_default=False)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[hint, option]))
        fn.__signature__ = inspect.Signature(params)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return decorate


@train_app.callback()
@_options_from(TrainConfig)
def train_cmd(ctx: typer.Context, **given) -> None:
    """Fine-tune a LoRA adapter on SFT data (QLoRA by default): a preset, then any field as a flag.
    `medloop train merge` folds an adapter into the base weights."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from medloop import models
    from medloop.training import make_config, train
    from medloop.training.data import BadSample

    settings = load_settings()
    given = {k: v for k, v in given.items() if v is not None}
    given.setdefault("swanlab_mode", settings.training.swanlab_mode)
    if given.get("base_model"):  # a GGUF base trains from its dequantised folder, made once in the home
        given["base_model"] = models.trainable(given["base_model"], settings.models_dir)
    try:
        config = make_config(given.pop("preset", "v1"), **given)
        result = train(config, log=console.print)
    except ValidationError as e:
        for err in e.errors():
            console.print(f"[red]error[/] --{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}")
        raise typer.Exit(2) from e
    except (ValueError, BadSample, FileNotFoundError) as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e
    out.print(f"adapter: {result.output_dir}  train loss {result.train_loss:.4f}"
              + (f"  eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""))


@train_app.command("merge")
def train_merge(adapter: Path, output: Path) -> None:
    """Write full merged weights (base + adapter) for deployments that want no adapter."""
    from medloop.training import merge

    out.print(f"merged model: {merge(adapter, output)}")
