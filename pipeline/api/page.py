"""The dashboard page (static/index.html) as served: with the kind of every column it may show.

The page formats numbers as the CLI does (`pipeline.core.tables`): the kinds come from the same
place, the table of metrics and the column kinds beside it, written into the page where it says
`COLUMN_KINDS`, so the page holds no list of its own.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pipeline.core import metrics, tables
from pipeline.store import schemas

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
PLACEHOLDER = "/*COLUMN_KINDS*/{}"


def column_kinds() -> dict[str, str]:
    """The kind (`tables.KINDS`) of every column of the results and trades tables and of every metric."""
    names = {*schemas.RESULT_SCHEMA.names, *schemas.TRADE_SCHEMA.names, *metrics.BY_NAME, *tables.COLUMN_KINDS}
    return {name: kind for name in sorted(names) if (kind := tables.kind_of(name)) is not None}


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    """index.html with `column_kinds()` in place."""
    text = PAGE.read_text(encoding="utf-8")
    if PLACEHOLDER not in text:
        raise RuntimeError(f"{PAGE} lost its {PLACEHOLDER} line")
    return text.replace(PLACEHOLDER, json.dumps(column_kinds(), separators=(",", ":")), 1)
