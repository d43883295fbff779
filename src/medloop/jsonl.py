"""JSON Lines read as objects, with the line number of each (and of the first bad one)."""

from __future__ import annotations

import json
from collections.abc import Iterator


class JSONLError(ValueError):
    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


def json_objects(text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object raises JSONLError."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise JSONLError(lineno, f"invalid JSON ({e.msg})") from e
        except RecursionError as e:  # a 3,000-deep array in a field nobody reads
            raise JSONLError(lineno, "JSON nested too deeply") from e
        if not isinstance(obj, dict):
            raise JSONLError(lineno, "expected a JSON object")
        yield lineno, obj
