"""Datasets as tensors: float32 images in their declared bounds (``[0, 1]``), NCHW, int64 labels.

``load_data(name, data_dir=..., val_size=...)`` returns :class:`Splits` with train, validation
and test tensors. The validation split is carved from the training split, stratified and fixed,
for model selection; the test split is never used to select anything.
"""

from __future__ import annotations

from toughen.data.splits import DATASETS, Dataset, Splits, list_datasets, load_data
from toughen.data import builtin as _builtin  # noqa: F401  (registers mnist5k, digits)
from toughen.data import files as _files  # noqa: F401  (registers mnist, cifar10)
from toughen.data import imagefolder as _imagefolder  # noqa: F401  (registers imagefolder)

__all__ = ["DATASETS", "Dataset", "Splits", "list_datasets", "load_data"]
