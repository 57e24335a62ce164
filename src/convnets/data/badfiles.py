"""The record of files skipped because they could not be read as images."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger("convnets.data")


class BadFileLog:
    """Files that were skipped, each with the reason, in the order they were found.

    An image folder scraped from the web always holds a few broken files; training skips
    them rather than dying mid-epoch, and this log is how the user finds out which. A path
    is recorded once even when a later epoch meets it again.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = {}
        self.extend(items)

    def add(self, path: str | Path, reason: str, *, warn: bool = True) -> None:
        """Record one skipped file and, unless ``warn`` is False (the caller sums such files up), log a
        warning the first time it is seen."""
        key = str(path)
        if key not in self._items:
            self._items[key] = reason
            if warn:
                logger.warning("skipped %s: %s", key, reason)

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        """Record several (path, reason) pairs."""
        for path, reason in items:
            self.add(path, reason)

    @property
    def items(self) -> list[tuple[str, str]]:
        """(path, reason) pairs, in the order they were found."""
        return list(self._items.items())

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self.items)

    def summary(self) -> str:
        """One line for the end of a run, e.g. ``3 bad files skipped (see bad_files.tsv)``."""
        n = len(self)
        return f"{n} bad file{'s' if n != 1 else ''} skipped" + (" (see bad_files.tsv)" if n else "")

    def write(self, run_dir: str | Path, name: str = "bad_files.tsv") -> Path:
        """Write ``path<TAB>reason`` lines (with a header) to ``run_dir/name`` and return the file.

        The file is tab-separated as the ``csv`` module's ``excel-tab`` dialect writes it: a field
        holding a tab, a line break or a quote (a file name can hold any of them) is quoted, so that
        every row stays one path and its reason (``csv.reader(f, dialect="excel-tab")`` reads it back).
        """
        out = Path(run_dir) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        text = io.StringIO(newline="")
        writer = csv.writer(text, dialect="excel-tab", lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows(self.items)
        # surrogateescape writes a file name that is not valid UTF-8 (a Latin-1 name from an old archive) as its bytes.
        out.write_text(text.getvalue(), encoding="utf-8", errors="surrogateescape")
        return out
