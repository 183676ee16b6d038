"""What a person sees on the terminal: progress lines, a progress bar, tables."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

Progress = Callable[[str], None]


def silent(msg: str) -> None:
    """The default callback: say nothing."""


def to_stderr(msg: str) -> None:
    """One ``  - message`` line on stderr, flushed (stdout stays for results)."""
    print(f"  - {msg}", file=sys.stderr, flush=True)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell (the last one is not)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    widths[-1] = 0
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * max(w, len(h)) for h, w in zip(header, widths)))
    return "\n".join(lines)


# --- progress -------------------------------------------------------------------------
def progress_bar(total: int, label: str, stream=None, unit: str = "run",
                 disable: bool = False):
    """The bar every long command draws (tqdm on stderr): ``update(n)`` per ``n`` steps
    (``unit``s), ``set_postfix_str(note)`` for what runs now; ``disable`` draws nothing."""
    from tqdm import tqdm

    return tqdm(total=max(total, 1), desc=label, file=stream or sys.stderr, unit=unit,
                dynamic_ncols=True, mininterval=0.1, disable=disable)
