"""Text datasets: lists of strings and int64 labels, with a fixed train/validation/test split.

Names ``load_text_data`` understands:

- ``prompt_injection``: the built-in generated set (:mod:`toughen.text.injection`), 3,000 texts.
- ``csv:PATH`` / ``jsonl:PATH``: one file, ``text_column`` and ``label_column`` chosen by the caller.
  A ``split`` column with values ``train`` / ``test`` fixes the test split; otherwise a stratified
  20% is held out with a fixed seed. Labels may be strings ("benign") or integers.
- ``hfds:PATH``: a directory written by ``datasets.Dataset.save_to_disk`` (needs ``datasets``).

Bytes that are not valid UTF-8 are read as U+FFFD rather than failing the whole file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toughen._registry import Registry
from toughen.data.splits import VAL_SPLIT_SEED, stratified_split
from toughen.errors import ToughenUsageError

FILE_PREFIXES = ("csv:", "jsonl:", "hfds:")


@dataclass
class TextSplits:
    """Train, validation and test texts of a dataset. ``y_*`` are int64 class indices."""

    name: str
    x_train: list[str]
    y_train: torch.Tensor
    x_val: list[str]
    y_val: torch.Tensor
    x_test: list[str]
    y_test: torch.Tensor
    class_names: list[str]
    # each text's family (style), where the dataset tags them (prompt_injection: FAMILIES of
    # toughen.text.injection, "benign" for benign texts); None otherwise
    family_train: list[str] | None = None
    family_val: list[str] | None = None
    family_test: list[str] | None = None
    holdout_family: str | None = None  # the family trained without and tested alone, when one is

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# A loader takes (path or None, text_column, label_column) -> (texts, labels, split or None, class_names or None),
# optionally followed by each text's family tag
TEXT_DATASETS: Registry = Registry("text dataset")


def is_text_data(name: str | None) -> bool:
    """Whether a ``--data`` value names a text dataset (the CLI dispatches on this)."""
    return bool(name) and (name in TEXT_DATASETS or name.startswith(FILE_PREFIXES))


def list_text_datasets() -> list[str]:
    return TEXT_DATASETS.names() + [p + "PATH" for p in FILE_PREFIXES]


@TEXT_DATASETS.register("prompt_injection")
def _prompt_injection(path, text_column, label_column):
    from toughen.text.injection import generate_tagged

    texts, labels, families = generate_tagged(3000, seed=0)
    split = ["test" if i < 600 else "train" for i in range(len(texts))]  # generate() already shuffled
    return texts, labels, split, ["benign", "injection"], families


def _read_rows(path: Path, kind: str) -> list[dict]:
    if not path.is_file():
        raise ToughenUsageError(f"{kind} file {path} does not exist")
    text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    if kind == "csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ToughenUsageError(f"{path} line {i} is not JSON ({e.msg}); a .jsonl file has one object per line") from None
    return rows


def _from_rows(rows: list[dict], where: str, text_column: str, label_column: str):
    if not rows:
        raise ToughenUsageError(f"{where} has no rows")
    for column in (text_column, label_column):
        if column not in rows[0]:
            raise ToughenUsageError(
                f"{where} has no column {column!r}; its columns are {', '.join(map(str, rows[0]))}; "
                "choose with --text-column / --label-column"
            )
    texts = ["" if r.get(text_column) is None else str(r[text_column]) for r in rows]
    labels = [r.get(label_column) for r in rows]
    split = [str(r["split"]).strip().lower() for r in rows] if "split" in rows[0] else None
    return texts, labels, split, None


def _file_loader(kind: str):
    def load(path, text_column, label_column):
        return _from_rows(_read_rows(Path(path), kind), str(path), text_column, label_column)

    return load


def _hf_disk(path, text_column, label_column):
    try:
        import datasets
    except ImportError:
        raise ToughenUsageError("hfds:PATH needs the `datasets` package: pip install datasets") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        rows, split = [], []
        for name in ds:
            part = ds[name].to_list()
            rows += part
            split += ["test" if name in ("test", "validation") else "train"] * len(part)
        texts, labels, _, _ = _from_rows(rows, str(path), text_column, label_column)
        return texts, labels, split, None
    return _from_rows(ds.to_list(), str(path), text_column, label_column)


def _class_indices(labels: list, where: str) -> tuple[list[int], list[str]]:
    """Map labels to 0..K-1. Integer labels keep their value (classes 0..max); strings are sorted."""
    if any(v is None or (isinstance(v, str) and not v.strip()) for v in labels):
        raise ToughenUsageError(f"{where} has rows with an empty label")
    as_int = []
    for v in labels:
        try:
            f = float(v)
            if not f.is_integer() or f < 0:
                raise ValueError
            as_int.append(int(f))
        except (TypeError, ValueError):
            as_int = None
            break
    if as_int is not None:
        return as_int, [str(c) for c in range(max(as_int) + 1)]
    names = sorted({str(v).strip() for v in labels})
    index = {c: i for i, c in enumerate(names)}
    return [index[str(v).strip()] for v in labels], names


def load_text_data(
    name: str, text_column: str = "text", label_column: str = "label", val_size: int | float = 0.1,
    holdout_family: str | None = None,
) -> TextSplits:
    """Load a text dataset and split it into train, validation and test (stratified, fixed seeds).

    ``holdout_family``: for a dataset that tags its texts' families, train and validate without
    that family, and test on its texts (all of them, from every split: one family is a small
    share) beside the usual benign test texts; the other families' test texts are left out, so
    the test split measures only the unseen style."""
    if name.startswith(FILE_PREFIXES):
        prefix, path = name.split(":", 1)
        if not path:
            raise ToughenUsageError(f"--data {name} needs a path after '{prefix}:'")
        loader = {"csv": _file_loader("csv"), "jsonl": _file_loader("jsonl"), "hfds": _hf_disk}[prefix]
        loaded = loader(path, text_column, label_column)
    else:
        loaded = TEXT_DATASETS.get(name)(None, text_column, label_column)
    texts, labels, split, class_names = loaded[:4]
    families = loaded[4] if len(loaded) > 4 else None
    if class_names is None:
        labels, class_names = _class_indices(labels, name)
    if len(set(labels)) < 2:
        raise ToughenUsageError(f"{name} has only one class ({class_names[labels[0]]!r}); a classifier needs two or more")
    y = np.asarray(labels, dtype=np.int64)
    if split is not None and {"train", "test"} <= set(split):
        test_idx = np.array([i for i, s in enumerate(split) if s == "test"])
        train_idx = np.array([i for i, s in enumerate(split) if s != "test"])
    else:
        try:
            train_idx, test_idx = stratified_split(y, 0.2, VAL_SPLIT_SEED + 1)
        except ValueError as e:
            raise ToughenUsageError(f"{name} is too small to hold out a stratified test split: {e}") from None
    if holdout_family is not None:
        train_idx, test_idx = _hold_out(name, families, holdout_family, train_idx, test_idx)
    size = int(val_size) if val_size >= 1 else float(val_size)
    try:
        keep, held = stratified_split(y[train_idx], size, VAL_SPLIT_SEED)
    except ValueError as e:
        raise ToughenUsageError(f"{name} is too small for a validation split of {val_size}: {e}") from None
    keep, held = train_idx[keep], train_idx[held]
    pick = lambda idx: [texts[i] for i in idx]  # noqa: E731
    tensor = lambda idx: torch.as_tensor(y[idx], dtype=torch.long)  # noqa: E731
    tags = (lambda idx: [families[i] for i in idx]) if families is not None else (lambda idx: None)  # noqa: E731
    return TextSplits(
        name=name, x_train=pick(keep), y_train=tensor(keep), x_val=pick(held), y_val=tensor(held),
        x_test=pick(test_idx), y_test=tensor(test_idx), class_names=list(class_names),
        family_train=tags(keep), family_val=tags(held), family_test=tags(test_idx), holdout_family=holdout_family,
    )


def _hold_out(name: str, families: list[str] | None, family: str, train_idx: np.ndarray, test_idx: np.ndarray):
    """(train, test) indices with ``family`` moved out of training into the test split, and the
    test split's other tagged families (not benign ones) left out."""
    from toughen.text.injection import BENIGN

    if families is None:
        raise ToughenUsageError(f"{name} does not tag its texts' families; --holdout-family needs a dataset that "
                                "does (prompt_injection)")
    known = sorted(set(families) - {BENIGN})
    if family not in known:
        raise ToughenUsageError(f"unknown family {family!r} in {name}; choose one of {', '.join(known)}")
    tag = np.asarray(families)
    train_keep = train_idx[tag[train_idx] != family]
    test_keep = np.concatenate([test_idx[tag[test_idx] == BENIGN], np.flatnonzero(tag == family)])
    return train_keep, np.sort(test_keep)
