"""The image-folder dataset on tiny folders written here, and the on-device augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from toughen.data import load_data
from toughen.data.augment import DeviceBatches, crop_flip, random_crop, random_flip, to_unit_float
from toughen.data.imagefolder import read_image_folder
from toughen.errors import ToughenUsageError

CLASSES = ["cat", "dog", "frog"]


def _write(folder, rng, n_per_class, size=(6, 5), mode="RGB"):
    """n_per_class random images per class under folder/<class>/; returns {path name: array}."""
    written = {}
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
        for i in range(n_per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(folder / c / f"{i:03d}.png")
            written[(c, i)] = a
    return written


def test_train_and_test_folders_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    train = _write(tmp_path / "train", rng, 4)
    test = _write(tmp_path / "val", rng, 2)  # val/ stands in for test/
    x_train, y_train, x_test, y_test, classes = read_image_folder(tmp_path)
    assert classes == CLASSES
    assert x_train.dtype == torch.uint8 and x_train.shape == (12, 3, 5, 6)
    assert x_test.shape == (6, 3, 5, 6) and y_train.dtype == torch.int64
    assert y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and y_test.tolist() == [0, 0, 1, 1, 2, 2]
    # PNG is lossless: the pixels come back exactly, in CHW order
    assert np.array_equal(x_train[5].permute(1, 2, 0).numpy(), train[("dog", 1)])
    assert np.array_equal(x_test[4].permute(1, 2, 0).numpy(), test[("frog", 0)])


def test_one_folder_is_split_per_class_and_fixed(tmp_path):
    _write(tmp_path, np.random.default_rng(1), 10, mode="L")
    x_train, y_train, x_test, y_test, _ = read_image_folder(tmp_path)
    assert x_train.shape[1] == 1  # all gray: one channel
    assert len(x_test) == 6 and torch.bincount(y_test).tolist() == [2, 2, 2]
    assert len(x_train) == 24
    rows = lambda x: {tuple(r.tolist()) for r in x.flatten(1)}  # noqa: E731
    assert not rows(x_train) & rows(x_test)
    again = read_image_folder(tmp_path)
    assert torch.equal(again[2], x_test) and torch.equal(again[0], x_train)


def test_resize_and_load_data(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path / "train", rng, 6, size=(12, 8))
    _write(tmp_path / "test", rng, 2, size=(20, 10))  # another size: needs a resize
    with pytest.raises(ToughenUsageError, match="resize"):
        load_data("imagefolder", tmp_path, val_size=3)
    s = load_data("imagefolder", tmp_path, val_size=3, options={"resize": 8})
    assert s.input_shape == (3, 8, 8) and s.x_test.shape == (6, 3, 8, 8)
    assert s.x_train.dtype == torch.float32 and 0 <= s.x_train.min() and s.x_train.max() <= 1
    assert len(s.x_train) == 15 and len(s.x_val) == 3 and s.class_names == CLASSES
    with pytest.raises(ToughenUsageError, match="no option"):
        load_data("imagefolder", tmp_path, options={"size": 8})
    with pytest.raises(ToughenUsageError, match="no option"):
        load_data("digits", options={"resize": 8})


def test_bad_folders_say_what_to_do(tmp_path):
    with pytest.raises(ToughenUsageError, match="data-dir"):
        load_data("imagefolder")
    with pytest.raises(ToughenUsageError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ToughenUsageError, match="test/ nor val/"):
        read_image_folder(tmp_path)


def _shift_of(original, cropped, pad):
    """The (dy, dx) with cropped == padded original shifted by it, or None."""
    padded = torch.nn.functional.pad(original, (pad, pad, pad, pad))
    h, w = original.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            if torch.equal(padded[..., dy : dy + h, dx : dx + w], cropped):
                return dy, dx
    return None


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_is_a_shift_of_the_padded_image(dtype):
    x = torch.randint(1, 256, (64, 3, 6, 6)).to(dtype)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.dtype == dtype and out.shape == x.shape
    shifts = [_shift_of(a, b, 2) for a, b in zip(x, out)]
    assert None not in shifts
    assert len(set(shifts)) > 10  # each image gets its own offset
    assert torch.equal(out, random_crop(x, 2, torch.Generator().manual_seed(0)))
    assert random_crop(x, 0, gen) is x


def test_random_flip_mirrors_about_half():
    x = torch.rand(400, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 150 < int(mirrored.sum()) < 250


def test_device_batches_cover_each_example_once_and_shard_by_rank():
    x = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 4, 4).contiguous()
    y = torch.arange(50)
    batches = list(DeviceBatches(x, y, batch_size=8, shuffle_gen=torch.Generator().manual_seed(3)))
    assert len(batches) == 7
    labels = torch.cat([b[1] for b in batches])
    assert sorted(labels.tolist()) == list(range(50))
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and torch.allclose(xb[:, 0, 0, 0] * 255, yb.float())
    shards = [torch.cat([b[1] for b in DeviceBatches(x, y, batch_size=8, rank=r, world_size=3,
                                                     shuffle_gen=torch.Generator().manual_seed(3))])
              for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(50))
    assert [len(s) for s in shards] == [17, 17, 16]
    # with padding and a flip, still float in [0, 1] and the border is black
    aug = next(iter(DeviceBatches(x, y, batch_size=50, pad=2, flip=True,
                                  generator=torch.Generator().manual_seed(0))))[0]
    assert aug.min() >= 0 and aug.max() <= 1 and (aug == 0).any()
    assert torch.equal(to_unit_float(x)[:, :, 1:3, 1:3], crop_flip(to_unit_float(x), 0, False)[:, :, 1:3, 1:3])


def test_train_on_an_image_folder_with_a_resize(tmp_path):
    """`toughen train --resize N` reaches the dataset (data_options), end to end, with the
    on-device batch augmentation flags."""
    from toughen.cli import app
    from toughen.runs import read_config

    rng = np.random.default_rng(3)
    _write(tmp_path / "img" / "train", rng, 8, size=(10, 7))
    _write(tmp_path / "img" / "test", rng, 3, size=(9, 9))
    app(["train", "--data", "imagefolder", "--data-dir", str(tmp_path / "img"), "--resize", "6", "--val-size", "3",
         "--model", "small_cnn", "--recipe", "standard", "--epochs", "1", "--batch-size", "8", "--eps", "0.03",
         "--eval-steps", "1", "--crop-pad", "1", "--flip", "--out", str(tmp_path / "run"), "--json"],
        standalone_mode=False)
    info = read_config(tmp_path / "run")
    assert info["data_info"]["input_shape"] == [3, 6, 6] and info["data_info"]["n_test"] == 9
    assert info["train"]["data_options"] == {"resize": 6}
    assert info["train"]["crop_pad"] == 1 and info["train"]["flip"] is True
