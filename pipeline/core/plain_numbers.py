"""What a number typed by a user may look like: ASCII digits only, the same rule for every numeric input.

Python's int() and float() also take `1_4`, Arabic-Indic digits, `nan` and `inf`; every option,
strategy parameter and grid value goes through `is_plain_number` first, and the API's schema
patterns are built from the same expression.
"""

from __future__ import annotations

import re

# A plain number in ASCII: no `1_4`, no Arabic-Indic digits, no `nan`/`inf`.
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# The characters str.strip() removes around a value (the API's schema patterns allow them where a rule strips).
SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace())


def is_plain_number(text: str) -> bool:
    """Whether `text` is a number written with ASCII digits only (what every numeric option takes)."""
    return bool(PLAIN_NUMBER.fullmatch(text.strip()))
