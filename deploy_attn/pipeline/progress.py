"""Progress callbacks: every long stage takes ``progress(message)``, silent by default."""
from __future__ import annotations

import sys
from typing import Callable

Progress = Callable[[str], None]


def silent(msg: str) -> None:
    """The default callback: say nothing."""


def to_stderr(msg: str) -> None:
    """One ``  - message`` line on stderr, flushed (stdout stays for results)."""
    print(f"  - {msg}", file=sys.stderr, flush=True)
