"""Bytes on disk and over the network: hashing, atomic writes, downloads and the download cache.

The cache holds one folder per URL, named by the sha256 of the *whole* URL, with the file under
its own name inside (``~/.cache/convnets/weights/3f2a9c0e1b7d4a66/resnet50-0676ba61.pth``): two
URLs that end in the same file name never share an entry. A download goes to a ``.part`` file
beside its destination, is checked, and only then renamed into place, so nothing half-written
ever looks like a cached file. While it is written the ``.part`` file is locked; the next use of
the cache removes every unlocked one, i.e. those that a killed process left behind.

:func:`download` is a plain function for any URL (weights, data sets): an overall deadline, a
progress bar, and an error that says what happened when the server is missing, slow or wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from convnets.errors import ConfigError, DownloadError, WeightsError

try:  # POSIX: a download in progress holds a lock on its .part file
    import fcntl
except ImportError:  # Windows: the age of a .part file tells instead
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("convnets.weights")

CACHE_ENV = "CONVNETS_CACHE"  # replaces DEFAULT_CACHE_DIR when set
DEFAULT_CACHE_DIR = Path("~/.cache/convnets/weights")
PARTIAL_SUFFIX = ".part"
DEFAULT_DEADLINE = 30 * 60.0  # seconds for a whole download: EfficientNet-B7's 255 MB at 150 kB/s
STALL_TIMEOUT = 60.0  # seconds without a byte after which a download gives up

# torchvision's file names end in the first hex digits of the file's sha256 (resnet50-0676ba61.pth).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")
_HEX = re.compile(r"[0-9a-f]{8,64}")


def is_url(source: str) -> bool:
    """An http(s) URL, as opposed to a local path or a tag."""
    return source[:8].lower().startswith(("http://", "https://"))


def sha256_of(path: str | Path) -> str:
    """The hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(sha256: str | None, url: str | None = None) -> str | None:
    """The digest (or digest prefix, 8 hex digits at least) to check: ``sha256``, else one in a URL's file name.

    Raises:
        ConfigError: ``sha256`` is not 8 to 64 hex digits.
    """
    if sha256:
        if not _HEX.fullmatch(sha256.lower()):
            raise ConfigError(f"sha256 must be 8 to 64 hex digits (a digest or its prefix), got {sha256!r}")
        return sha256.lower()
    m = _HASH_IN_NAME.search(urllib.parse.urlparse(url).path) if url else None
    return m[1] if m else None


def hash_matches(path: str | Path, expected: str) -> bool:
    """Whether the file's sha256 starts with ``expected`` (a full digest or a prefix)."""
    return sha256_of(path).startswith(expected)


def check_writable(folder: str | Path, named: str | Path) -> None:
    """Raise now, naming ``named``, when files could not be written into ``folder`` (made if missing): a
    read-only disk, a file on the way, no permission. Commands call it before their work, not after it.

    The nearest folder that exists is tried with a temporary file, which is what :func:`atomic_write` needs.

    Raises:
        NotADirectoryError: a file stands where a folder of the path should be.
        OSError: the folder refuses a new file (its errno and reason).
    """
    base = Path(folder)
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{base} is a file, not a folder", str(named))
    try:
        tempfile.TemporaryFile(dir=base).close()
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(named)) from None


def atomic_write(path: str | Path, write: Any) -> Path:
    """Write a file so that a crash at any moment leaves either the old file or the new one.

    ``write(tmp_path)`` writes the content; the temporary file is fsynced and renamed over
    ``path`` (an atomic operation on POSIX and Windows), then the directory is fsynced. A
    temporary file left by a writer that died is removed by :func:`remove_stale_temporaries`;
    while the write lasts, its temporary file is locked so that a live one is told apart.

    Raises:
        OSError: the disk is full, read-only or refuses the write; ``filename`` is ``path``
            (not the temporary file), so the message names the file the user knows.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _naming(err, path) from err
    try_lock(fd)  # a fresh file: nobody else holds it; kept open, and so locked, until the rename
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; a result file should not be
        if fcntl is None:  # Windows cannot rename a file that is open
            os.close(fd)
            fd = -1
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path``: a write error from a buffer names no file, and the temporary file is not one the
    user knows. An error that names another file (a parent directory that could not be made) is kept."""
    named = Path(err.filename).name if err.filename else ""
    if err.errno is None or (named and not named.startswith(f".{path.name}.")):
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))


# The temporary files of atomic_write: ".NAME.XXXXXXXX.tmp" (mkstemp's random part).
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(directory: str | Path, names: str = "*") -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls left in ``directory``.

    A temporary file still being written is locked by its writer and kept; one whose writer died
    (the lock goes with the process) is removed. Returns the removed files.

    Args:
        directory: Where to look (not below).
        names: Only temporaries of files whose names match this glob (``features-*.safetensors``):
            in a directory shared with other tools, leave their files alone.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for tmp in directory.iterdir():
        match = _TEMPORARY.fullmatch(tmp.name)
        if not match or not fnmatch.fnmatchcase(match[1], names) or not tmp.is_file():
            continue
        try:
            fd = os.open(tmp, os.O_RDWR)
        except FileNotFoundError:  # its writer just renamed it
            continue
        try:
            if try_lock(fd):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def try_lock(fd: int) -> bool:
    """Take an exclusive advisory lock on an open file without waiting; False when another process holds it.

    The operating system releases the lock when the process ends, however it ends (kill -9
    included). Where ``fcntl`` does not exist (Windows) nothing is locked and this returns True.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def download(url: str, dest: str | Path, sha256: str | None = None, deadline: float = DEFAULT_DEADLINE,
             progress: bool | None = None) -> Path:
    """Download ``url`` to ``dest``: all of it, checked, within ``deadline`` seconds, or nothing.

    The bytes go to a locked ``dest.parent/.NAME.XXXX.part`` that is renamed to ``dest`` only once
    complete and matching ``sha256``; any failure or interruption (Ctrl-C included) deletes it.

    Args:
        url: an http(s) URL.
        dest: where the file goes; its folder is created.
        sha256: the expected hex digest, or a prefix of it (8 digits at least); not checked when None.
        deadline: seconds for the whole download; a server that keeps sending a byte now and then
            is stopped there. A server silent for ``STALL_TIMEOUT`` seconds is stopped earlier.
        progress: a progress bar on stderr: always (True), never (False) or on a terminal (None).

    Returns:
        ``dest``.

    Raises:
        DownloadError: the server is unreachable, answers an error, stalls, misses the deadline,
            closes early, or sends a file with another sha256.
        ConfigError: ``deadline`` is not positive, or ``sha256`` is not hex.
    """
    if not is_url(url):
        raise DownloadError(f"{url}: not an http(s) URL")
    if not deadline > 0:
        raise ConfigError(f"deadline must be a positive number of seconds, got {deadline}")
    expected = expected_sha256(sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
    try:
        with open(fd, "wb", buffering=0) as out:  # unbuffered: what arrived is on disk, the mtime fresh
            try_lock(out.fileno())  # a fresh file: nobody else holds it; locked until renamed or closed
            _transfer(url, out, deadline, progress, dest.name)
            os.fsync(out.fileno())
            if expected and not hash_matches(tmp, expected):
                raise DownloadError(f"sha256 mismatch for {url}: expected {expected}"
                                    f"{'' if len(expected) == 64 else '...'}, got {sha256_of(tmp)}; "
                                    "the file was not kept")
            os.chmod(tmp, 0o666 & ~_umask())
            if fcntl is not None:
                os.replace(tmp, dest)  # still locked: a concurrent cache clean-up cannot take it
        if fcntl is None:
            os.replace(tmp, dest)  # Windows cannot rename an open file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def _transfer(url: str, out: IO[bytes], deadline: float, progress: bool | None, label: str) -> None:
    """Copy the body of ``url`` into ``out`` with a progress bar, within ``deadline`` seconds."""
    from tqdm import tqdm

    end = time.monotonic() + deadline
    done, total = 0, None
    try:
        # The socket timeout bounds each wait for bytes; the deadline bounds the sum of them.
        with urllib.request.urlopen(url, timeout=min(STALL_TIMEOUT, deadline)) as response:
            if response.headers.get_content_type() == "text/html":  # no weights or data file is a web page
                raise DownloadError(f"cannot download {url}: the server sent a web page (text/html), not the file "
                                    "(a login or error page?); open the URL in a browser to see what it asks for")
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                      disable=None if progress is None else not progress) as bar:
                # read1: whatever has arrived (up to 1 MiB), so a slow server still moves the bar
                # and the deadline is checked between arrivals.
                while block := response.read1(1 << 20):
                    out.write(block)
                    done += len(block)
                    bar.update(len(block))
                    if time.monotonic() > end:
                        raise DownloadError(
                            f"cannot download {url}: not finished after {deadline:g} s ({_size(done)} of "
                            f"{_size(total) if total else 'an unknown size'}); the server is too slow")
    except DownloadError:
        raise
    except urllib.error.HTTPError as err:
        reason = str(err.reason).strip().splitlines()[0] if str(err.reason).strip() else ""  # one line, not urllib's
        raise DownloadError(f"cannot download {url}: the server answered {err.code} {reason}".rstrip()) from err
    except TimeoutError as err:
        raise DownloadError(f"cannot download {url}: no data for {min(STALL_TIMEOUT, deadline):g} s "
                            f"after {_size(done)}; the server stalled") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot download {url}: {reason}") from err
    if total is not None and done != total:
        raise DownloadError(f"cannot download {url}: the connection closed after {_size(done)} of {_size(total)}")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} byte{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where downloads are kept: ``cache_dir``, else ``$CONVNETS_CACHE``, else ``~/.cache/convnets/weights``."""
    from_env = cache_dir is None and bool(os.environ.get(CACHE_ENV))
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    try:
        return Path(cache_dir).expanduser()
    except RuntimeError as err:  # "~user" of no such user, or no home directory at all
        where = f"${CACHE_ENV}" if from_env else "the cache directory"
        raise ConfigError(f"{where} = {str(cache_dir)!r}: {str(err).rstrip('.')}; give an absolute path") from err


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """The cache entry of ``url``: a folder named by the sha256 of the whole URL, holding the file by its name."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if name in ("", ".", ".."):
        name = "download"
    return cache_root(cache_dir) / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def remove_partials(cache_dir: str | Path | None = None) -> list[Path]:
    """Delete the ``.part`` files of downloads that were interrupted (no process writes them any more).

    Returns:
        The files removed.
    """
    root = cache_root(cache_dir)
    removed = []
    for part in sorted(root.glob(f"*/.*{PARTIAL_SUFFIX}")):
        if _abandoned(part):
            part.unlink(missing_ok=True)
            removed.append(part)
            logger.warning("removed %s, left by an interrupted download", part)
            _rmdir_if_empty(part.parent)
    return removed


def _abandoned(part: Path) -> bool:
    """True for a .part file that no download is writing: unlocked (POSIX), or untouched for a while (Windows)."""
    try:
        if fcntl is None:
            return time.time() - part.stat().st_mtime > 2 * STALL_TIMEOUT  # a live download writes more often
        with open(part, "r+b") as f:  # writable: over NFS an exclusive lock needs it
            return try_lock(f.fileno())
    except FileNotFoundError:  # finished or removed meanwhile
        return False


def discard(path: Path) -> None:
    """Remove a cache entry (a download that turned out unreadable), so that the next use downloads it again."""
    path.unlink(missing_ok=True)
    _rmdir_if_empty(path.parent)


def _rmdir_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        directory.rmdir()


def cached_download(url: str, *, sha256: str | None = None, cache_dir: str | Path | None = None,
                    deadline: float = DEFAULT_DEADLINE, progress: bool | None = None) -> Path:
    """The cached copy of ``url``, downloaded and checked the first time.

    The sha256 is ``sha256`` or else the digest prefix in a torchvision-style file name; a cached
    copy that no longer matches it is downloaded again (with a logged line). Leftovers of
    interrupted downloads are removed first.

    Raises:
        DownloadError: the download failed, or the file's sha256 is wrong (then nothing is cached).
    """
    if not is_url(url):
        raise WeightsError(f"{url}: not an http(s) URL")
    remove_partials(cache_dir)
    dest = cache_path(url, cache_dir)
    expected = expected_sha256(sha256, url)
    if dest.is_file():
        if expected is None or hash_matches(dest, expected):
            logger.info("using cached %s", dest)
            return dest
        logger.warning("%s: the cached copy of %s has another sha256 (damaged?): downloading it again", dest, url)
        dest.unlink()
    logger.info("downloading %s to %s", url, dest)
    try:
        return download(url, dest, expected, deadline=deadline, progress=progress)
    except BaseException:
        _rmdir_if_empty(dest.parent)  # a failed download leaves no empty entry either
        raise
