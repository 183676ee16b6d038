"""Error types the CLI turns into one-line messages.

Anything raised that is *not* a DeployAttnError is a bug and keeps its traceback.
"""
from __future__ import annotations


class DeployAttnError(Exception):
    """Base class for errors caused by user input or the environment, not by a bug."""


class UnknownModelError(DeployAttnError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(DeployAttnError, ValueError):
    """Arguments a module or stage cannot take (channels, heads, input size, options)."""


class ArtifactError(DeployAttnError):
    """A file on disk is missing, corrupt, or not what the stage expects."""


class ParityError(DeployAttnError):
    """An artifact's outputs differ from the reference PyTorch model beyond tolerance."""


class CheckpointError(DeployAttnError):
    """A checkpoint does not load into the model."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message without terminal colour codes (a
    third-party error quoted inside a one-line message), else the exception's type."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def typed_first_line(exc: BaseException) -> str:
    """``Type: first line`` of a third-party exception (the type alone if it has no message)."""
    first, kind = first_line(exc), type(exc).__name__
    return kind if first == kind else f"{kind}: {first}"
