"""Datasets read from their standard files in a directory: MNIST (IDX) and CIFAR-10 (pickle)."""

from __future__ import annotations

import gzip
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from toughen.data.splits import DATASETS, Dataset
from toughen.errors import ToughenUsageError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]

# IDX type codes (the third byte of the magic number) -> numpy dtype, big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ToughenUsageError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ToughenUsageError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _require_dir(name: str, data_dir: Path | None, needed: list[str]) -> Path:
    if data_dir is None:
        raise ToughenUsageError(
            f"dataset {name!r} is read from files: pass --data-dir DIR holding {', '.join(needed)}"
        )
    if not data_dir.is_dir():
        raise ToughenUsageError(f"data directory {data_dir} does not exist; it should hold {', '.join(needed)}")
    return data_dir


def _find(data_dir: Path, stem: str) -> Path | None:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download_with_torchvision(name: str, data_dir: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise ToughenUsageError(
            f"--download for {name} needs torchvision (pip install torchvision); "
            "or put the files in the data directory yourself"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        tvd.MNIST(str(data_dir), download=True)
    else:
        tvd.CIFAR10(str(data_dir), download=True)


@DATASETS.register("mnist")
def mnist(data_dir: Path | None, download: bool = False) -> Dataset:
    """The full MNIST (60,000 / 10,000) from the four IDX files, gzipped or not."""
    needed = [f"{stem}[.gz]" for stem in MNIST_FILES.values()]
    if download and data_dir is not None:
        _download_with_torchvision("mnist", data_dir)
        data_dir = data_dir / "MNIST" / "raw"
    data_dir = _require_dir("mnist", data_dir, needed)
    paths = {key: _find(data_dir, stem) for key, stem in MNIST_FILES.items()}
    missing = [f"{MNIST_FILES[k]}[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise ToughenUsageError(
            f"{data_dir} lacks {', '.join(missing)}; put the MNIST IDX files there, or pass --download "
            "(needs torchvision)"
        )
    arrays = {key: read_idx(p) for key, p in paths.items()}  # type: ignore[arg-type]

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1).contiguous()

    return Dataset(
        name="mnist",
        x_train=images(arrays["train_images"]),
        y_train=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        x_test=images(arrays["test_images"]),
        y_test=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        class_names=[str(i) for i in range(10)],
    )


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a callable that is not on the allowed list."""


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds only builtin containers and numpy arrays.

    A pickle runs code by naming a callable (a "global") for the loader to call: ``eval``,
    ``os.system``. The CIFAR-10 batches need only numpy's array reconstruction, so every other
    global is refused before it is looked up, and nothing in the file can run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"it asks to run {module}.{name}")
        with warnings.catch_warnings():  # numpy 2 warns about the numpy.core path old pickles name
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR-10 python batch: a dict of numpy arrays and lists, read without running code."""
    try:
        with path.open("rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
    except _Refused as e:
        raise ToughenUsageError(f"refused {path}: {e}, and a CIFAR-10 batch holds only arrays and lists; "
                                "replace it with the original file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, ImportError) as e:
        raise ToughenUsageError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                                "replace it with the original file") from None
    if not isinstance(d, dict):
        raise ToughenUsageError(f"{path} is not a CIFAR-10 python batch (a {type(d).__name__}, not a dict)")
    return d


@DATASETS.register("cifar10")
def cifar10(data_dir: Path | None, download: bool = False) -> Dataset:
    """CIFAR-10 (50,000 / 10,000, 32x32 RGB) from the python-pickle batches."""
    if download and data_dir is not None:
        _download_with_torchvision("cifar10", data_dir)
    data_dir = _require_dir("cifar10", data_dir, CIFAR10_FILES)
    if not (data_dir / "data_batch_1").is_file() and (data_dir / "cifar-10-batches-py").is_dir():
        data_dir = data_dir / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (data_dir / f).is_file()]
    if missing:
        raise ToughenUsageError(
            f"{data_dir} lacks {', '.join(missing)}; put the CIFAR-10 python batches there "
            "(cifar-10-python.tar.gz, extracted), or pass --download (needs torchvision)"
        )

    def batches(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for n in names:
            d = _unpickle(data_dir / n)
            data, labels = d.get(b"data"), d.get(b"labels")
            if not isinstance(data, np.ndarray) or labels is None or data.size != len(labels) * 3072 or not len(labels):
                raise ToughenUsageError(f"{data_dir / n} is not a CIFAR-10 batch: it needs b'data' (N x 3072 uint8) "
                                        "and b'labels' (N labels) for N >= 1; replace it with the original file")
            xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels, dtype=np.int64))
        x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
        return x.contiguous(), torch.from_numpy(np.concatenate(ys))

    x_train, y_train = batches(CIFAR10_FILES[:5])
    x_test, y_test = batches(["test_batch"])
    meta = _unpickle(data_dir / "batches.meta")
    if not isinstance(meta.get(b"label_names"), list):
        raise ToughenUsageError(f"{data_dir / 'batches.meta'} lacks b'label_names'; replace it with the original file")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return Dataset("cifar10", x_train, y_train, x_test, y_test, class_names=names)
