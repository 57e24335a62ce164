"""Reader and writer for the IDX format of MNIST, Fashion-MNIST, KMNIST and EMNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian int32 per dimension, then the values in C order, big-endian.
Files are often gzip-compressed; both forms are read.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

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


class IDXFormatError(DataError):
    """An IDX file whose header is invalid or does not match its size."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == _GZIP_MAGIC:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # a truncated or damaged gzip stream
        raise IDXFormatError(f"{path}: cannot decompress: {err}") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array.

    Args:
        path: The file.

    Returns:
        An array with the file's dimensions, in native byte order.

    Raises:
        FileNotFoundError: If the file does not exist.
        IDXFormatError: If the magic number is not IDX or the header's dimensions do not
            match the number of bytes that follow (a truncated or padded file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IDXFormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: header declares {ndim} dimensions but the file has only {len(data)} bytes")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFormatError(
            f"{path}: header says shape {tuple(shape)} ({expected} data bytes) but the file has "
            f"{len(data) - header} data bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


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
