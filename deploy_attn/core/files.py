"""Files written atomically, JSON, digests and the library versions a run used."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError


def shared_mode() -> int:
    """The mode of a file created under the process's umask (0666 minus it)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block
    finishes, so an interrupted or failed write never leaves a file that looks valid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, shared_mode())  # mkstemp creates 0600; artifacts are shared files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (engines, ONNX files, checkpoints, source files)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; ArtifactError (one line) when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable ({type(exc).__name__})") from None


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the artifacts depend on."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("deploy-attn", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxsim",
                 "onnxscript", "polygraphy", "tensorrt", "openvino", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions
