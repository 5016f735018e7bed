"""The reference vectors in ``tests/data/vectors`` (computed by the Go Kaylee and fleet).

They are facts about the Go original and fleet that this project cannot recompute, so
they are kept inside the repository (a copy of the team's shared vectors): a fresh clone
with nothing beside it runs every test. ``tests/data/vectors/README.md`` explains the
fields.

Lines are split on "\\n" only: the vectors hold U+2028 inside JSON strings, which
``str.splitlines`` would treat as a line break.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parent / "data" / "vectors"


def load(name: str) -> list[dict[str, Any]]:
    """Every row of ``name`` (e.g. ``kaylee-go.jsonl``), in file order."""
    text = (VECTORS_DIR / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]
