"""A user's code as a model source: FILE.py:CALLABLE, package.module:CALLABLE, timm and torchvision."""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch.nn as nn

from .core.errors import ConfigError, DeployAttnError, typed_first_line
from .core.files import file_sha256

HUBS = {"timm": "timm", "torchvision": "torchvision"}


def _import_file(path: Path, digest: str):
    """Import a user's ``.py`` file (whose sha256 is ``digest``) as a module (not as
    ``__main__``: its ``if __name__ == '__main__'`` block does not run), once per content."""
    name = f"deploy_attn_user.{path.stem}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)  # so the file's own sibling imports work
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{path}: importing it failed: {typed_first_line(exc)}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"{name}: cannot import it: {typed_first_line(exc)}") from None
    except Exception as exc:
        raise ConfigError(f"{name}: importing it failed: {typed_first_line(exc)}") from None


def _attribute(module, attr: str, where: str) -> Callable[..., Any]:
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            close = difflib.get_close_matches(attr, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; it defines {', '.join(sorted(names)[:6])}" if names else "")
            raise ConfigError(f"{where} has no '{attr}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}:{attr} is a {type(obj).__name__}, not a class or function")
    return obj


def resolve_callable(target: str) -> tuple[Callable[..., Any], dict]:
    """``FILE.py:CALLABLE`` / ``package.module:CALLABLE`` -> the callable, and what the
    record keeps about it (the file's path and hash, for files)."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"'{target}': expected FILE.py:CALLABLE or package.module:CALLABLE")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such Python file")
        digest = file_sha256(path)
        module = _import_file(path, digest)
        return _attribute(module, attr, str(path)), {
            "file": str(path.resolve()), "file_sha256": digest}
    return _attribute(_import_module(where), attr, where), {"module": where}


def call_builder(fn: Callable[..., Any], args: Mapping[str, Any], what: str) -> nn.Module:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = fn(**args)
    except DeployAttnError:
        raise
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ConfigError(f"{what}({shown}) failed: {typed_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def hub_model(hub: str, name: str, args: Mapping[str, Any]) -> tuple[nn.Module, str]:
    """A timm / torchvision model with random weights (never a download)."""
    try:
        package = importlib.import_module(HUBS[hub])
    except Exception as exc:
        raise ConfigError(f"{hub}:{name} needs the {hub} package, which is not importable "
                          f"here ({typed_first_line(exc)}): pip install {hub}") from None
    for flag in ("pretrained", "weights"):
        if args.get(flag):
            raise ConfigError(f"{hub}:{name}: --model-arg {flag} would download weights; "
                              "give a checkpoint file with --weights instead")
    version = getattr(package, "__version__", "?")
    if hub == "timm":
        known = package.list_models()
        build = lambda: package.create_model(name, pretrained=False, **args)  # noqa: E731
    else:
        from torchvision import models

        known = models.list_models()
        build = lambda: models.get_model(name, weights=None, **args)  # noqa: E731
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{hub} {version} has no model '{name}'{hint}")
    return call_builder(lambda: build(), {}, f"{hub}:{name}"), version
