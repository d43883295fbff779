"""`medloop`: one verb per stage of the life cycle, each a thin shell over one function of its room.

The app and its groups are made in `common`; each group's commands live in a module of their own (knowledge: ingest,
search, index; serve: serve, demo; train; loop: scheduler, adapters; evaluate: eval), imported here so that they
register. Errors a user can act on (`medloop.errors.UserError`, settings that do not validate, a full disk) are said
in one line by `main`."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medloop.cli.common import app, console  # noqa: E402
from medloop.config import Settings  # noqa: E402
from medloop.errors import UserError  # noqa: E402


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
            where, why = ".".join(map(str, err["loc"])), err["msg"].removeprefix("Value error, ")
            console.print(f"error: setting {where}: {why}" if where else f"error: {why}", markup=False,
                          highlight=False, style="red", soft_wrap=True)
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
