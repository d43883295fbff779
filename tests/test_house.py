"""The house as README.md draws it: five rooms with one-way arrows, no import circle, no file too long to read."""

import ast
from pathlib import Path

from medloop.testing import REPO

SRC = REPO / "src"
ROOMS = {"knowledge": set(), "retrieval": {"knowledge"}, "training": set(), "serving": {"retrieval"},
         "continual": {"knowledge", "retrieval", "training"}}  # the rooms each room may import
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "medloop").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports() -> dict[str, set[str]]:
    """Module -> the medloop modules it imports, anywhere in it (an import inside a function is an arrow too)."""
    mods = modules()

    def module_of(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("medloop"):
                names = [module_of(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                names = [module_of(a.name) for a in node.names if a.name.startswith("medloop")]
            else:
                continue
            edges[m] |= {n for n in names if n and n != m}
    return edges


def test_no_import_circle():
    edges = imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    circles = sorted(m for m in edges if reaches(m, m))
    assert circles == [], circles


def test_rooms_import_only_the_rooms_below_them():
    room = {m: m.split(".")[1] for m in modules() if m.count(".") >= 1}
    wrong = sorted((m, t) for m, targets in imports().items() if room.get(m) in ROOMS for t in targets
                   if room.get(t) != room[m] and (room.get(t) in ROOMS or room.get(t) in ("cli", "testing"))
                   and room.get(t) not in ROOMS[room[m]])
    assert wrong == [], wrong


def test_no_file_too_long_to_read():
    long = {str(f.relative_to(SRC)): n for f in (SRC / "medloop").rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, long
