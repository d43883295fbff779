"""The one base class of errors a user can act on: the CLI prints their message as one line and exits 1,
never a traceback. Each room raises its own subclass where the problem is found."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a busy data home, a bad file or flag, a full disk): the message says what."""
