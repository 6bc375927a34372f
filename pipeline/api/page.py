"""The dashboard page (static/index.html) as served: with the kind of every column it may show.

The page formats numbers as the CLI does (`pipeline.core.tables`): the kinds come from the same
place, the table of metrics and the column kinds beside it, written into the page where it says
`COLUMN_KINDS`, so the page holds no list of its own.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pipeline.core import metrics, run_options, tables
from pipeline.store import schemas

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
PLACEHOLDER = "/*COLUMN_KINDS*/{}"
# The per-set run options (sl .. slippage, leverage, direction): their result fields and defaults.
EXECUTION_PLACEHOLDER = "/*EXECUTION*/{}"
EXECUTION_DEFAULT_PLACEHOLDER = "/*EXECUTION_DEFAULT*/{}"


def column_kinds() -> dict[str, str]:
    """The kind (`tables.KINDS`) of every column of the results and trades tables and of every metric."""
    names = {*schemas.RESULT_SCHEMA.names, *schemas.TRADE_SCHEMA.names, *metrics.BY_NAME, *tables.COLUMN_KINDS}
    return {name: kind for name in sorted(names) if (kind := tables.kind_of(name)) is not None}


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    """index.html with `column_kinds()` and the per-set run options in place."""
    text = PAGE.read_text(encoding="utf-8")
    fills = {PLACEHOLDER: column_kinds(),
             EXECUTION_PLACEHOLDER: {o.name: o.record_field for o in run_options.PER_SET},
             EXECUTION_DEFAULT_PLACEHOLDER: {o.record_field: o.default for o in run_options.PER_SET}}
    for placeholder, value in fills.items():
        if placeholder not in text:
            raise RuntimeError(f"{PAGE} lost its {placeholder} line")
        text = text.replace(placeholder, json.dumps(value, separators=(",", ":")), 1)
    return text
