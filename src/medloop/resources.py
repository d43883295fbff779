"""The data files that ship inside the medloop package (sample guidelines, evaluation sets, term lists), found the
way the packaging tools mean them to be found: through `importlib.resources`, from a checkout or an installed wheel
alike (setuptools installs package data unpacked, so the folder is a real path)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DATA = Path(str(files("medloop").joinpath("data")))
SAMPLE_GUIDELINES = DATA / "guidelines"
