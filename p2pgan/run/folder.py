"""Claiming a results folder: one run at a time, and no run silently mixes into another's results.

``claim_results_dir(path, force=..., resume=...)`` is taken before a run writes anything:

* the folder (and its parents) is created; an output path that is a file or cannot be created is
  a one-line :class:`ConfigError` (exit 2);
* an exclusive, non-blocking ``flock`` on ``<folder>/.lock`` is held until the claim is released;
  a second run on the same folder, from any process, gets a one-line error instead of interleaving
  its files. The kernel drops the lock when the holder dies, SIGKILL included, so a killed run can
  be resumed at once;
* a folder holding anything besides the lock file is refused unless ``force`` (its contents are
  removed first) or ``resume`` (they are what the run continues from).

``--force`` removes files, so it only clears a folder a p2pgan run has used before (one holding
the lock file, ``summary.json`` or ``config.json``): ``--out ~ --force`` must not empty a home.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from types import TracebackType

from p2pgan.config.loader import check_output_path
from p2pgan.errors import ConfigError

LOCK_NAME = ".lock"
RUN_MARKERS = (LOCK_NAME, "summary.json", "config.json")
"""Files whose presence shows a p2pgan run wrote the folder (so ``force`` may clear it)."""


class ResultsClaim:
    """An exclusive hold on a results folder; release it with :meth:`release` or a ``with`` block.

    The lock file descriptor is not inherited by child processes (Python opens files
    non-inheritable), so node processes a coordinator starts do not keep the folder locked.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "ResultsClaim":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:  # a claim dropped without release must not leak the descriptor
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter teardown
            pass


def claim_results_dir(path: Path, *, force: bool, resume: bool, key: str = "output.dir",
                      source: str = "") -> ResultsClaim:
    """Create and lock ``path`` for one run (see the module docstring). ``key``/``source`` name
    where the folder came from in error messages (e.g. ``key="--out", source="scenario run"``)."""
    path = Path(path)
    where = source or str(path)
    if force and resume:
        raise ConfigError(where, key, "--force clears the folder a resume continues from; use one of them")
    check_output_path(path, key, source=source)
    if resume and not path.is_dir():
        raise ConfigError(where, key, f"{path} does not exist (nothing to resume)")
    used_before = any((path / marker).exists() for marker in RUN_MARKERS)  # before our lock file exists
    lock_existed = (path / LOCK_NAME).exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(where, key, f"cannot create results folder {path} ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise ConfigError(where, key, f"{path} is in use by another run{holder} "
                                      "(wait for it to finish, or choose another folder)") from None
    except OSError as exc:
        os.close(fd)
        raise ConfigError(where, key, f"cannot lock {path / LOCK_NAME} ({exc.strerror or exc})") from None
    claim = ResultsClaim(path, fd)
    try:
        _record_holder(fd)
        contents = _contents(path)
        if resume and not contents:
            raise ConfigError(where, key, f"{path} is empty (nothing to resume)")
        if contents and not (force or resume):
            raise ConfigError(where, key, f"results folder {path} is not empty (use --force to replace "
                                          "its results, or `p2pgan scenario resume` to continue that run)")
        if contents and force:
            if not used_before:
                raise ConfigError(where, key, f"{path} does not look like a p2pgan results folder "
                                              "(no summary.json or config.json); refusing to clear it")
            _clear(path, contents, where, key)
    except BaseException:
        if not lock_existed:
            # A refused claim leaves the folder as it found it: a lock file of ours would mark
            # a user's folder as a run's, and a later --force would empty it.
            (path / LOCK_NAME).unlink(missing_ok=True)
        claim.release()
        raise
    return claim


def _contents(path: Path) -> list[Path]:
    return sorted(entry for entry in path.iterdir() if entry.name != LOCK_NAME)


def _clear(path: Path, contents: list[Path], where: str, key: str) -> None:
    for entry in contents:
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            raise ConfigError(where, key, f"--force could not remove {entry} ({exc.strerror or exc})") from None


def _record_holder(fd: int) -> None:
    """Write our pid into the lock file, so the refusal a second run gets can say who holds it."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
