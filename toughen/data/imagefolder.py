"""A directory of class folders of images (the ``ImageFolder`` layout), read into memory as uint8.

Layouts understood, the class of an image being the name of the folder that holds it::

    root/train/<class>/*.png   root/test/<class>/*.png     (or root/val/ instead of test/)
    root/<class>/*.png                                      (one folder: a fixed, stratified
                                                             20% of each class is the test split)

Images are decoded with Pillow, converted to RGB (to one channel when every image is
grayscale), optionally resized, and stacked as uint8 NCHW: a quarter of the memory of float32,
and the form to move to the device, where conversion and augmentation are cheap
(:mod:`toughen.data.augment`). The registered ``imagefolder`` dataset converts to float32 in
``[0, 1]`` at the end, because that is the contract of :class:`~toughen.data.splits.Dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from toughen.data.splits import DATASETS, Dataset, stratified_split
from toughen.errors import ToughenUsageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
# With a single folder, this fraction of each class is the test split; the split is fixed forever
# (changing it would silently change every reported number).
SINGLE_FOLDER_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
_TEST_NAMES = ("test", "val")


def find_images(root: Path, classes: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``root/<class>/`` (recursively), their class indices, and the class
    names (sorted folder names, or ``classes`` to fix the order and the set)."""
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ToughenUsageError(f"{root} holds no class folders; put each class's images in {root}/<class>/")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise ToughenUsageError(f"{root} lacks the class folder {name!r} that the training split has")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ToughenUsageError(
            f"no images under {root}/<class>/ (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return paths, labels, list(classes)


def _decode(path: Path, resize: int | None) -> np.ndarray:
    """One image as HWC uint8 RGB; with ``resize``, its shorter side scaled to ``resize`` and the
    centre square cut out (the usual ImageNet evaluation transform, keeping the aspect ratio)."""
    from PIL import Image  # Pillow: a dependency of matplotlib, so always installed with toughen

    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # not an image, empty, truncated
        raise ToughenUsageError(f"{path} is not a readable image ({' '.join(str(e).split())}); "
                                "remove it or replace it") from None
    with img:
        img = img.convert("RGB")
        if resize is not None:
            w, h = img.size
            scale = resize / min(w, h)
            nw, nh = max(resize, round(w * scale)), max(resize, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - resize) // 2, (nh - resize) // 2
            img = img.crop((left, top, left + resize, top + resize))
        return np.asarray(img, dtype=np.uint8)


def read_images(paths: Sequence[Path], resize: int | None = None) -> torch.Tensor:
    """Decode ``paths`` into one uint8 NCHW tensor (three channels, or one if all are gray).

    Without ``resize`` every image must have the same size."""
    if resize is not None and (not isinstance(resize, int) or resize < 1):
        raise ToughenUsageError(f"resize must be a whole number of pixels >= 1, got {resize!r}")
    arrays = [_decode(p, resize) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        sizes = sorted({f"{s[1]}x{s[0]}" for s in shapes})
        raise ToughenUsageError(
            f"the images have different sizes ({', '.join(sizes[:4])}{', ...' if len(sizes) > 4 else ''}); "
            "set a resize (data_options: {resize: 64} in the config) to bring them to one square size"
        )
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    # Gray images decoded as RGB have three equal channels: keep one.
    if bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()):
        x = x[:, :1]
    return x.contiguous()


def read_image_folder(
    root: str | Path, resize: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Read an image folder as ``(x_train, y_train, x_test, y_test, class_names)``, images as
    uint8 NCHW and labels as int64. See the module docstring for the layouts.

    Example::

        x_train, y_train, x_test, y_test, classes = read_image_folder("data/flowers", resize=64)
    """
    root = Path(root)
    if not root.is_dir():
        raise ToughenUsageError(f"image folder {root} does not exist")
    test_dir = next((root / n for n in _TEST_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        paths, labels, classes = find_images(root / "train")
        test_paths, test_labels, _ = find_images(test_dir, classes)
        x_train, x_test = read_images(paths, resize), read_images(test_paths, resize)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ToughenUsageError(
                f"train images are {tuple(x_train.shape[1:])} but test images {tuple(x_test.shape[1:])}; set a resize"
            )
        return x_train, torch.tensor(labels), x_test, torch.tensor(test_labels), classes
    if (root / "train").is_dir():
        raise ToughenUsageError(f"{root} has train/ but neither test/ nor val/; add one, or drop the train/ level")
    paths, labels, classes = find_images(root)
    y = np.asarray(labels)
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:
        raise ToughenUsageError(
            f"class {classes[int(counts.argmin())]!r} has {counts.min()} image(s); a single folder is split "
            "into train and test per class, which needs at least 2 images in each"
        )
    n_test = max(len(classes), round(SINGLE_FOLDER_TEST_FRACTION * len(y)))
    train_idx, test_idx = stratified_split(y, n_test, _SPLIT_SEED)
    x = read_images(paths, resize)
    labels_t = torch.from_numpy(y.astype(np.int64))
    return x[train_idx], labels_t[train_idx], x[test_idx], labels_t[test_idx], classes


@DATASETS.register("imagefolder")
def imagefolder(data_dir: Path | None, download: bool = False, resize: int | None = None) -> Dataset:
    """Images in class folders under ``data_dir`` (train/ and test/ or val/, or one folder split
    80/20 per class), optionally resized to ``resize`` x ``resize``."""
    if data_dir is None:
        raise ToughenUsageError("dataset 'imagefolder' is read from files: pass --data-dir DIR holding <class>/ "
                                "folders of images (or train/<class>/ and test/<class>/)")
    if download:
        raise ToughenUsageError("an image folder cannot be downloaded; point --data-dir at your own images")
    x_train, y_train, x_test, y_test, classes = read_image_folder(data_dir, resize)
    return Dataset(
        name="imagefolder",
        x_train=x_train.float().div_(255),
        y_train=y_train,
        x_test=x_test.float().div_(255),
        y_test=y_test,
        class_names=classes,
    )
