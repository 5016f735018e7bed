"""The reference vectors in ``../shared/vectors`` (computed by the Go Kaylee and fleet).

Lines are split on "\\n" only: the vectors hold U+2028 inside JSON strings, which
``str.splitlines`` would treat as a line break.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


def load(name: str) -> list[dict[str, Any]]:
    """Every row of ``name`` (e.g. ``kaylee-go.jsonl``), in file order."""
    text = (VECTORS_DIR / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]
