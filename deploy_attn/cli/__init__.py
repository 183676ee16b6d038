"""`deploy-attn`: parse, call a job or a command, print; errors as one line."""
from __future__ import annotations

import re
import signal
import sys
import threading
import warnings
from typing import Sequence

from ..core.errors import DeployAttnError
from .parser import build_parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, timeout, CI cancellation), handled like Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _one_line(text: str) -> str:
    """An error message as one line: no ANSI colour codes, no line breaks."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text))
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with warnings.catch_warnings():
            # third-party warnings (torch, onnx, converters) are not the user's business
            # and would break the one-line errors; deploy-attn's own notes are progress lines
            warnings.simplefilter("ignore")
            return args.func(args)
    except DeployAttnError as exc:
        print(f"deploy-attn: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment (disk, permissions), not a bug: one line
        where = exc.filename if exc.filename is not None else ""
        where += f" -> {exc.filename2}" if exc.filename2 else ""
        reason = exc.strerror or _one_line(exc) or type(exc).__name__
        print(f"deploy-attn: error: {where + ': ' if where else ''}{reason}", file=sys.stderr)
        return 1
    except Terminated:
        print("deploy-attn: terminated (SIGTERM); nothing partial was left", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("deploy-attn: interrupted; nothing partial was left", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
