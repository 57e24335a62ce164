"""Reader and writer for the IDX format of MNIST, Fashion-MNIST, KMNIST and EMNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian int32 per dimension, then the values in C order, big-endian.
Files are often gzip-compressed; both forms are read.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from convnets.errors import DataError

# Type codes of the format (LeCun's MNIST page); values are stored big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# The most data one file may declare: EMNIST's largest (ByClass) training images are 550 MB.
_MAX_DATA_BYTES = 8 << 30


class IDXFormatError(DataError):
    """An IDX file whose header is invalid or does not match its size."""


def _open(path: Path) -> BinaryIO:
    """The file's decompressed byte stream (gzip or raw)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array.

    The header is read first and the data after it only up to the size it declares, so a file
    that holds more (a huge sparse file, a gzip stream that inflates to gigabytes) is refused
    before it is read into memory.

    Args:
        path: The file.

    Returns:
        An array with the file's dimensions, in native byte order.

    Raises:
        FileNotFoundError: If the file does not exist.
        IDXFormatError: If the magic number is not IDX, the header's dimensions do not match the
            number of bytes that follow (a truncated or padded file), or the gzip stream is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        with _open(path) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise IDXFormatError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
            dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise IDXFormatError(f"{path}: header declares {ndim} dimensions but the file has only "
                                     f"{4 + len(dims)} bytes")
            shape = struct.unpack(f">{ndim}i", dims)
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize  # exact: int64 would overflow
            if not 0 <= expected <= _MAX_DATA_BYTES:
                raise IDXFormatError(f"{path}: header says shape {tuple(shape)} ({expected:,} data bytes), which "
                                     f"no IDX dataset holds (at most {_MAX_DATA_BYTES:,} are read)")
            data = f.read(expected + 1)  # one byte more tells a file that holds more, without reading it all
            if len(data) != expected:
                if not isinstance(f, gzip.GzipFile):
                    held: int | str = path.stat().st_size - len(magic) - len(dims)
                else:
                    held = len(data) if len(data) < expected else f"more than {expected}"
                raise IDXFormatError(f"{path}: header says shape {tuple(shape)} ({expected} data bytes) but the "
                                     f"file has {held} data bytes")
    except (OSError, EOFError, zlib.error) as err:  # a truncated or damaged gzip stream
        raise IDXFormatError(f"{path}: cannot decompress: {err}") from err
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write an array as an IDX file.

    Args:
        path: Destination; compressed with gzip when it ends in ``.gz`` unless ``compress`` says otherwise.
        array: Values of one of the IDX types (uint8, int8, int16, int32, float32, float64).
        compress: Force gzip on or off.

    Returns:
        The path written.
    """
    path = Path(path)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"IDX cannot store dtype {array.dtype}")
    code = codes[native]
    payload = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}i", *array.shape)
        + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    )
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
