"""CIFAR python batches: real ones load (as Python 2 wrote them, and re-saved by Python 3); no batch runs code."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import numpy.testing._private.utils as numpy_test_utils
import pytest
import torch

from convnets.data import load_cifar, load_dataset
from convnets.data.formats.cifar import read_batch
from convnets.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------ batches as Krizhevsky's files hold them


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled the way Python 2's cPickle (protocol 2) wrote the real CIFAR batches.

    Python 3 cannot write this form itself: Python 2 ``str`` values are SHORT_BINSTRING/BINSTRING
    opcodes, and numpy arrays are ``numpy.core.multiarray._reconstruct`` + ``ndarray.__setstate__``
    with the raw bytes as such a string. Handles what the batches hold: dict, list, str, int, and
    2-D uint8 arrays.
    """

    def string(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def integer(v: int) -> bytes:
        if 0 <= v < 256:
            return b"K" + bytes([v])
        return b"M" + struct.pack("<H", v) if 0 <= v < 65536 else b"J" + struct.pack("<i", v)

    def dump(x: object) -> bytes:
        if isinstance(x, str):
            return string(x.encode("latin1"))
        if isinstance(x, bool):
            return b"\x88" if x else b"\x89"
        if isinstance(x, int):
            return integer(x)
        if isinstance(x, list):
            return b"]" + (b"(" + b"".join(dump(v) for v in x) + b"e" if x else b"")
        if isinstance(x, dict):
            return b"}" + (b"(" + b"".join(dump(k) + dump(v) for k, v in x.items()) + b"u" if x else b"")
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
        dtype = (b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
                 + b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b")
                + b"\x87R(" + integer(1) + integer(x.shape[0]) + integer(x.shape[1]) + b"\x86" + dtype + b"\x89"
                + string(x.tobytes()) + b"tb")

    return b"\x80\x02" + dump(obj) + b"."


def write_cifar10(root: Path, n: int = 6, *, dumps=py2_pickle, seed: int = 0) -> Path:
    """A CIFAR-10 folder in the real layout and form (Python 2 pickles by default), ``n`` images per batch."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / "batches.meta").write_bytes(
        dumps({"num_cases_per_batch": n, "label_names": CIFAR10_NAMES, "num_vis": 3072})
    )
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {
            "batch_label": f"batch {i + 1}",
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"image_{i}_{j}.png" for j in range(n)],
        }
        (root / name).write_bytes(dumps(batch))
    return root


def test_the_python2_writer_makes_what_pickle_reads():
    """The hand-written Python 2 form is a valid pickle that the standard unpickler reads to the same values."""
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    obj = {"labels": [3, 300, 70000], "data": data, "name": "x" * 300, "empty": []}
    back = pickle.loads(py2_pickle(obj), encoding="latin1")
    assert back["labels"] == [3, 300, 70000] and back["name"] == "x" * 300 and back["empty"] == []
    np.testing.assert_array_equal(back["data"], data)


def test_real_form_python2_batches_load(tmp_path):
    root = write_cifar10(tmp_path / "cifar-10-batches-py")
    data = load_dataset(tmp_path)
    assert data.name == "cifar10" and data.classes == CIFAR10_NAMES
    assert (len(data.train), len(data.test)) == (30, 6) and data.train.images.shape[1:] == (3, 32, 32)
    first = pickle.loads((root / "data_batch_1").read_bytes(), encoding="latin1")
    assert torch.equal(data.train.images[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))
    assert data.train.labels[:6].tolist() == first["labels"]
    named = load_dataset("cifar10", data_dir=tmp_path)  # the name, with the batches' parent as --data-dir
    assert torch.equal(named.test.images, data.test.images)


def test_cifar_label_out_of_range_names_the_batch(tmp_path):
    root = write_cifar10(tmp_path / "c")
    batch = pickle.loads((root / "data_batch_3").read_bytes(), encoding="latin1")
    batch["labels"][0] = 10
    (root / "data_batch_3").write_bytes(py2_pickle(batch))
    with pytest.raises(DataError, match=r"data_batch_3: labels must lie in 0..9"):
        load_dataset(root)


def test_cifar100_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    names = [f"class{i}" for i in range(100)]
    (root / "meta").write_bytes(py2_pickle({"fine_label_names": names, "coarse_label_names": names[:20]}))
    for split, labels in (("train", [99, 0, 99, 5, 99]), ("test", [99, 0, 5])):
        data = np.zeros((len(labels), 3072), np.uint8)
        (root / split).write_bytes(py2_pickle({"data": data, "fine_labels": labels, "coarse_labels": [0] * 5}))
    data = load_dataset("cifar100", data_dir=tmp_path)
    assert data.num_classes == 100 and data.train.labels.tolist() == [99, 0, 99, 5, 99] and len(data.test) == 3


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_resaved_by_python3_load(tmp_path, protocol):
    """Batches re-pickled by Python 3 with numpy 2 (numpy._core names, _frombuffer, numpy scalars) still load."""
    def dumps(obj):
        if "labels" in obj:  # labels as numpy scalars, as `list(array)` makes them
            obj = dict(obj, labels=list(np.asarray(obj["labels"], dtype=np.int64)))
        return pickle.dumps(obj, protocol=protocol)

    write_cifar10(tmp_path / "c", dumps=dumps)
    data = load_cifar(tmp_path / "c")
    assert (len(data.train), len(data.test)) == (30, 6) and data.classes[3] == "cat"


# ------------------------------------------------------------------ nothing in a batch runs code


class Payload:
    """Pickles as a call of ``function(*args)``: what a hostile batch does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    """Ways a pickle can try to create ``marker``: each would, under plain ``pickle.load``."""
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').write('ran')"),
        "numpy runstring": Payload(numpy_test_utils.runstring, f"open({str(marker)!r}, 'w').write('ran')", {}),
    }


def test_the_payloads_do_run_under_plain_pickle(tmp_path):
    """The attack is real: each payload creates the marker when unpickled the ordinary way."""
    for i, payload in enumerate(payloads(tmp_path / "m").values()):
        marker = tmp_path / "m"
        pickle.loads(pickle.dumps(payload))
        assert marker.exists(), i
        marker.unlink()


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "numpy runstring"])
@pytest.mark.parametrize("target", ["batches.meta", "data_batch_3", "test_batch"])
def test_a_batch_that_asks_to_run_code_is_refused(tmp_path, kind, target):
    root = write_cifar10(tmp_path / "c")
    marker = tmp_path / "marker"
    batch = pickle.loads((root / target).read_bytes(), encoding="latin1")
    key = "label_names" if target == "batches.meta" else "labels"
    batch[key] = [payloads(marker)[kind]] + list(batch[key])[1:]  # hidden inside an ordinary list
    (root / target).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=rf"{target}: refused to load: the pickle asks for \w+"):
        load_dataset(root)
    assert not marker.exists()


def test_refusal_names_what_was_asked_for(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(Payload(os.system, "true")))
    with pytest.raises(DataError, match=r"test_batch: refused to load: the pickle asks for (posix|nt)\.system"):
        read_batch(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a CIFAR python batch"),  # empty file
        (b"\x80\x02}q\x00(U\x04data", "not a CIFAR python batch"),  # truncated mid-pickle
        (b"this is not a pickle at all", "not a CIFAR python batch"),
        (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
    ],
)
def test_damaged_batches_are_named(tmp_path, content, message):
    root = write_cifar10(tmp_path / "c")
    (root / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match=rf"data_batch_2: .*{message}"):
        load_dataset(root)


def test_batches_without_their_entries_are_named(tmp_path):
    root = write_cifar10(tmp_path / "c")
    (root / "batches.meta").write_bytes(py2_pickle({"names": CIFAR10_NAMES}))
    with pytest.raises(DataError, match=r"batches.meta: .*no 'label_names' entry"):
        load_dataset(root)
    write_cifar10(root)
    (root / "data_batch_4").write_bytes(py2_pickle({"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataError, match=r"data_batch_4: .*no 'labels' entry"):
        load_dataset(root)
    (root / "data_batch_4").write_bytes(py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match=r"data_batch_4: expected uint8 data \(N, 3072\)"):
        load_dataset(root)
