"""CIFAR-10 and CIFAR-100 python-format batches, read without running code from them.

The batches are pickles, and an ordinary pickle may call any function while it loads (a
``__reduce__`` payload runs ``os.system``). They are read here with :class:`CifarUnpickler`, which
builds only what the real files hold: dicts, lists, strings, bytes, numbers and numpy arrays. A
file that asks for anything else is refused, naming the file and what it asked for.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convnets.data.core import SPLITS, Dataset, LoadOptions, check_labels, check_splits, in_memory_dataset
from convnets.errors import DataError

try:  # numpy >= 2 keeps these in numpy._core; pickles name either module, whichever numpy wrote them
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles (protocol 2) use it for bytes; only the latin-1 codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Every global a real CIFAR batch names, whichever Python and numpy wrote it: Krizhevsky's files
# (Python 2 cPickle, protocol 2) name numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype;
# files re-saved from Python 3 add numpy scalars, numpy's protocol-5 _frombuffer and _codecs.encode.
# These build arrays and scalars from plain data and can call nothing else.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = scalar
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _frombuffer


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only the dict/list/str/bytes/number/numpy-array content of CIFAR batches.

    Args:
        file: The open batch file.
        path: Its name, for messages.
    """

    def __init__(self, file: io.BufferedIOBase, path: str | Path) -> None:
        # latin1 reads Python 2 str as str, including the bytes of numpy arrays (numpy's advice for such pickles).
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path}: refused to load: the pickle asks for {module}.{name}, which CIFAR batches never "
                "contain (only dicts, lists, strings, numbers and numpy arrays are read); nothing was run"
            ) from None


def read_batch(path: str | Path) -> dict[str, Any]:
    """One CIFAR batch or meta file as a dict, read with :class:`CifarUnpickler`.

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: The pickle asks for anything but plain data and numpy arrays, is damaged, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file missing: {path}")
    with open(path, "rb") as f:
        try:
            batch = CifarUnpickler(f, path).load()
        except DataError:
            raise
        # A damaged pickle fails in many ways (truncated opcodes, wrong argument types to numpy's
        # constructors, a bad numpy state): all of them mean the same to the user.
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a CIFAR python batch ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR python batch (holds a {type(batch).__name__}, not a dict)")
    return batch


def _field(batch: dict[str, Any], key: str, path: str) -> Any:
    if key not in batch:
        raise DataError(f"{path}: not a CIFAR python batch: no {key!r} entry (has {', '.join(map(repr, batch))})")
    return batch[key]


def _class_names(meta: dict[str, Any], key: str, path: str) -> list[str]:
    names = _field(meta, key, path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path}: {key!r} must be a list of class names")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _cifar_layout(root: Path) -> tuple[str, list[str], list[str], str, str] | None:
    """(name, train files, test files, meta file, label key) of a CIFAR folder, or None."""
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
            return (
                "cifar10",
                [str(folder / f"data_batch_{i}") for i in range(1, 6)],
                [str(folder / "test_batch")],
                str(folder / "batches.meta"),
                "labels",
            )
        if (folder / "meta").is_file() and (folder / "train").is_file() and (folder / "test").is_file():
            return "cifar100", [str(folder / "train")], [str(folder / "test")], str(folder / "meta"), "fine_labels"
    return None


def load_cifar(
    root: str | Path,
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-format batches in a local folder.

    Args:
        root: The extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent.
        image_size, channels, resize, splits: As for :func:`~convnets.data.load_idx_dataset`; the batches
            of a split not asked for are not read (the class names are in the meta file).

    Raises:
        FileNotFoundError: No CIFAR batches in ``root``, or a batch file missing.
        DataError: A batch that asks to run code, is damaged, or holds other than uint8 (N, 3072)
            data and N labels in range (the message names the file).
    """
    splits = check_splits(splits)
    root = Path(root)
    layout = _cifar_layout(root)
    if layout is None:
        raise FileNotFoundError(f"{root}: no CIFAR python batches (batches.meta + data_batch_*, or meta + train)")
    name, train_files, test_files, meta_file, key = layout
    classes = _class_names(read_batch(meta_file), "label_names" if name == "cifar10" else "fine_label_names",
                           meta_file)
    parts: list[tuple[np.ndarray, np.ndarray] | None] = []
    for split, files in zip(SPLITS, (train_files, test_files), strict=True):
        if split not in splits:
            parts.append(None)
            continue
        images, labels = [], []
        for path in files:
            batch = read_batch(path)
            data, lab = np.asarray(_field(batch, "data", path)), np.asarray(_field(batch, key, path))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or lab.shape != (len(data),):
                raise DataError(
                    f"{path}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
                    f"and labels of shape {lab.shape}"
                )
            if lab.size and lab.dtype.kind not in "iu":
                raise DataError(f"{path}: labels must be whole numbers, got {lab.dtype}")
            lab = lab.astype(np.int64)
            check_labels(lab, len(classes), path)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(lab)
        parts.append((np.concatenate(images), np.concatenate(labels)))
    return in_memory_dataset(
        name,
        classes,
        parts[0],
        parts[1],
        image_size=image_size,
        channels=channels,
        resize=resize,
        source=str(root),
    )


def recognise(path: Path) -> bool:
    """Whether ``path`` (or its cifar-10-batches-py / cifar-100-python subfolder) holds CIFAR batches."""
    return _cifar_layout(path) is not None


def load(path: Path, options: LoadOptions) -> Dataset:
    """:func:`load_cifar` with :func:`~convnets.data.load_dataset`'s options."""
    return load_cifar(path, **options.shape)
