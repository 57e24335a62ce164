"""Output directories convnets writes (training runs, experiments): whose they are, and one writer at a time.

A directory convnets writes holds a small marker file, ``.convnets-run``: JSON naming what the
directory is (``train`` or ``experiment``) and the process that last wrote it. The marker is also
the lock: the writer holds an exclusive ``flock`` on it, which the operating system releases when
that process ends, however it ends (kill -9 included), so a crashed run never locks its directory
for ever. Directories written before markers existed are recognised by their ``config.json`` (a
run) or ``results.json`` (an experiment).

Anything else that is not empty belongs to someone else and is refused, not overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from convnets.errors import RunDirectoryError
from convnets.training.config import TrainConfig
from convnets.weights import remove_stale_temporaries, try_lock

MARKER = ".convnets-run"


class DirectoryBusy(RunDirectoryError):
    """The directory is being written by another process (a default directory then passes to the next number)."""


KINDS = {"train": "a training run", "experiment": "an experiment"}
# Made by file browsers in any folder they show; convnets never writes these names, so nothing is lost.
IGNORED = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def kind_of(directory: str | Path) -> str | None:
    """What convnets wrote in ``directory``: ``train``, ``experiment``, ``unknown`` (a marker that a writer
    killed while writing it left empty), or None (not a convnets directory)."""
    directory = Path(directory)
    try:
        marker = json.loads((directory / MARKER).read_text())
        return marker["kind"] if isinstance(marker, dict) and marker.get("kind") in KINDS else "unknown"
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return "unknown"
    config = _json_keys(directory / "config.json")
    if {"model", "data", "out"} <= config <= {f.name for f in dataclasses.fields(TrainConfig)}:
        return "train"
    if _json_keys(directory / "results.json") >= {"name", "budget", "claim"}:
        return "experiment"
    runs = directory / "runs"  # an experiment stopped before its results.json: its training runs
    if runs.is_dir() and any(kind_of(run) == "train" for run in runs.iterdir() if run.is_dir()):
        return "experiment"
    return None


def _json_keys(path: Path) -> set[str]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return set(values) if isinstance(values, dict) else set()


class RunDirectory:
    """An exclusive claim on an output directory, as a context manager (or :meth:`acquire`/:meth:`release`).

    Acquiring refuses a path that is a file, a non-empty directory convnets did not write, one of
    another kind (an experiment's directory as a run's ``--out``), and one another process is
    writing; it creates the directory if needed and removes the temporary files of writes a
    killed process left. Releasing a directory in which nothing was written (a run refused after
    the claim, such as a resume with conflicting options) removes the marker and the directories
    the claim created, so nothing is left behind.

    Args:
        path: The directory.
        kind: ``train`` or ``experiment``.
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path, self.kind = Path(path), kind
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunDirectory:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"{path} is a file, not a directory: choose another --out")
        if path.is_symlink() and not path.exists():
            raise RunDirectoryError(f"{path} is a link to nothing (or a loop of links): choose another --out")
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise RunDirectoryError(f"{path} cannot be made: {above} is a file, not a folder; choose another --out")
        if path.is_dir():
            self._check_owner()
        self._created = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = self._lock()
        except BaseException:
            self._remove_created()
            raise
        try:
            command = ["convnets", *sys.argv[1:]] if "convnets" in sys.argv[0] else sys.argv
            info = {"kind": self.kind, "pid": os.getpid(), "host": socket.gethostname(),
                    "command": shlex.join(command)}
            os.ftruncate(self._fd, 0)
            os.write(self._fd, (json.dumps(info) + "\n").encode())
        except OSError as err:
            self.release()
            raise OSError(err.errno, err.strerror, str(path / MARKER)) from err
        removed = remove_stale_temporaries(path)
        if removed:
            print(f"{path}: removed {len(removed)} temporary file(s) of an interrupted write "
                  f"({', '.join(p.name for p in removed[:3])})", flush=True)

    def _check_owner(self) -> None:
        path = self.path
        found = sorted(name for name in os.listdir(path) if name not in IGNORED)
        if not found:
            return
        kind = kind_of(path)
        if kind is None:
            listed = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise RunDirectoryError(f"{path} is not empty and convnets did not write it (it holds {listed}): "
                                    "choose a new or empty --out; nothing was changed")
        if kind not in (self.kind, "unknown"):
            raise RunDirectoryError(f"{path} holds {KINDS[kind]}, not {KINDS[self.kind]}: choose another --out")

    def _lock(self) -> int:
        marker = self.path / MARKER
        while True:
            fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o666)
            if not try_lock(fd):
                os.close(fd)
                raise DirectoryBusy(f"{self.path} is being written by {_holder(marker)}: wait for it to end, "
                                        "or choose another --out")
            try:
                if os.stat(marker).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # the marker was removed (or replaced) while we waited for it: lock the current one

    def release(self) -> None:
        """Give up the claim; a directory that holds nothing but the marker is removed with it."""
        if self._fd is None:
            return
        try:
            if set(os.listdir(self.path)) - IGNORED == {MARKER}:
                (self.path / MARKER).unlink()
                self._remove_created()
        except OSError:  # removed or filled meanwhile: whatever is there stays
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def _remove_created(self) -> None:
        """Remove the directories the claim created, deepest first, each only while it is empty."""
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:
                return


def _holder(marker: Path) -> str:
    """Who holds a directory's lock, as its marker says: ``process 1234 on HOST (convnets train ...)``."""
    try:
        info = json.loads(marker.read_text())
        where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
        command = info.get("command", "")
        return f"process {info['pid']}{where}" + (f" ({command[:100]})" if command else "")
    except (OSError, ValueError, KeyError, TypeError):  # the holder is writing it this very moment
        return "another process"
