"""A run stages its files and publishes them together, under a lock."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ..core.errors import ArtifactError
from ..core.files import shared_mode


# --- export directories as transactions ------------------------------------------------
STAGING_PREFIX = ".export-"  # a run's staging folder inside the export directory


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` itself for the block (flock on the folder:
    no lock file to leave behind, and the lock dies with its process, even killed).
    Another run holding it is an ArtifactError naming its process."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pids = sorted({p.name[len(STAGING_PREFIX):].split("-")[0]
                           for p in directory.glob(STAGING_PREFIX + "*")})
            raise ArtifactError(f"{directory}: another deploy-attn run (pid "
                                f"{', '.join(pids) or '?'}) is writing there; wait for it or "
                                "choose another -o") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(directory: Path) -> Iterator[Path]:
    """A fresh staging folder inside ``directory`` (same filesystem: publishing is a
    rename), removed afterwards. Call it under directory_lock: staging folders left by
    runs that were killed are removed first, since no other run can be writing."""
    for stale in directory.glob(STAGING_PREFIX + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=directory))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (a publish is never torn by them)."""
    import signal

    blocked = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def publish(staged: Path, directory: Path, files: list[str], report: str,
            owned: Callable[[str], bool]) -> None:
    """Move the staged ``files`` and then ``report`` into ``directory``, and remove the
    files of an earlier export (``owned`` names) that this one does not have. Every
    target is checked first (a folder where a file must go is an ArtifactError before
    anything moves); the old report goes first, so even a publish torn by SIGKILL leaves
    no report describing files it does not."""
    keep = set(files) | {report}
    mode = shared_mode()
    for name in files + [report]:
        target = directory / name
        if target.exists() and not target.is_file():
            raise ArtifactError(f"{target} is not a file (a folder?); remove it or choose "
                                "another -o")
        os.chmod(staged / name, mode)  # shared artifacts, as atomic_path writes
    stale = [p for p in directory.iterdir() if p.name not in keep and owned(p.name)
             and (p.is_file() or p.is_dir() and not p.is_symlink())]
    with signals_deferred():
        (directory / report).unlink(missing_ok=True)
        for name in files:
            os.replace(staged / name, directory / name)
        for old in stale:  # files, and folders of results about the old files (maps/)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(staged / report, directory / report)
