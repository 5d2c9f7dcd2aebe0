"""Dataset: the arrays of a training and a validation split, and what they are for.

Images stay in their stored integer type and are scaled to model inputs batch by batch
(``scale``), so a rank holds 1 byte per pixel, not 4 or 8.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mpidl.data.files import row_bytes, row_chunks, take_rows
from mpidl.errors import DataError


@dataclass
class Dataset:
    name: str
    task: str                 # classification | binary | regression
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int          # outputs for classification; 1 for binary/regression
    scale: float = 1.0        # multiply stored inputs by this to get model inputs
    val_name: str = "val"     # 'val' or 'test', as the dataset provides
    # Training-time augmentation: (inputs already scaled, this rank's Generator) -> inputs.
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    class_names: list | None = None    # label i is class_names[i] (string targets, image folders)
    feature_names: list | None = None  # a table's feature columns, in order
    source: str | None = None          # the file or folder it was read from
    # --normalize: per-feature shift and divisor, fitted on the training set (mpidl.data.normalize).
    normalizer: object | None = None

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    def inputs(self, x: np.ndarray, dtype) -> np.ndarray:
        """Stored samples -> model inputs: the type, the stored scale, then --normalize (the same
        arithmetic as mpidl.load's predictions, so those reproduce the reported figures exactly)."""
        return prepare_inputs(x, dtype, self.scale, self.normalizer)

    def preprocessing(self) -> dict:
        """What turns raw samples into model inputs, as JSON (model.json, checkpoints)."""
        out = {"input_scale": self.scale}
        if self.normalizer is not None:
            out["normalize"] = self.normalizer.to_dict()
        return out

    def digest(self) -> bytes:
        """Sizes, shapes and up to 64 sampled rows of each array: cheap (a few pages of a
        memory-mapped file), and enough to catch ranks that read different files."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val):
            h.update(repr((tuple(a.shape), str(a.dtype))).encode())
            rows = np.unique(np.linspace(0, len(a) - 1, num=min(len(a), 64)).astype(np.int64))
            h.update(np.ascontiguousarray(take_rows(a, rows)).tobytes())
        h.update(repr((self.name, self.task, self.num_classes, self.scale, self.class_names)).encode())
        if self.normalizer is not None:
            h.update(repr(self.normalizer.to_dict()).encode())
        return h.digest()

    def validate(self, rank: int = 0, size: int = 1) -> None:
        """Checks that name the split and the sample. With rank/size, this rank checks only its
        share of the inputs (the caller agrees on the verdict): no rank reads a whole large file."""
        for split, x, y in (("train", self.x_train, self.y_train), ("validation", self.x_val, self.y_val)):
            if len(x) != len(y):
                raise DataError(f"{self.name}: {split} has {len(x)} inputs but {len(y)} labels")
            if len(x) == 0:
                raise DataError(f"{self.name}: {split} split is empty")
            if np.dtype(x.dtype).kind == "f":
                shard = np.array_split(np.arange(len(x)), size)[rank]
                if len(shard):
                    first_nonfinite(self.name, split, x, int(shard[0]), int(shard[-1]) + 1)
            if self.task == "classification":
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi >= self.num_classes:
                    raise DataError(f"{self.name}: {split} labels span {lo}..{hi}, "
                                    f"outside the {self.num_classes} classes 0..{self.num_classes - 1}")
            elif not np.isfinite(np.asarray(y, dtype=np.float64)).all():
                raise DataError(f"{self.name}: {split} targets contain NaN or infinite values")


def first_nonfinite(name: str, split: str, x, start: int, stop: int) -> None:
    """Raise naming the first sample in start..stop with a NaN or infinite input, reading
    the rows in bounded chunks."""
    for rows in row_chunks(len(x), row_bytes(x), start, stop):
        ok = np.isfinite(np.asarray(x[rows]).reshape(rows.stop - rows.start, -1)).all(axis=1)
        if not ok.all():
            raise DataError(f"{name}: {split} sample {rows.start + int(np.argmin(ok))} has NaN or "
                            "infinite inputs")


def prepare_inputs(x, dtype, scale: float = 1.0, normalizer=None) -> np.ndarray:
    out = np.asarray(x).astype(dtype)
    if scale != 1.0:
        out *= scale
    if normalizer is not None:
        normalizer.apply_(out)
    return out


def infer_task(y: np.ndarray) -> tuple[str, int]:
    """(task, outputs) from targets: integer labels are classes (0..max), floats are values."""
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        return "classification", int(y.max()) + 1 if y.size else 0
    return "regression", 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))


def ArrayDataset(x_train, y_train, x_val=None, y_val=None, *, task: str | None = None,
                 num_classes: int | None = None, scale: float = 1.0, name: str = "arrays") -> Dataset:
    """A dataset from arrays in memory (or memory maps): integer labels train a classifier,
    float targets a regression. Without validation arrays the training set is evaluated
    (reported as 'train')."""
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    val_name = "val"
    if x_val is None:
        x_val, y_val, val_name = x_train, y_train, "train"
    x_val, y_val = np.asarray(x_val), np.asarray(y_val)
    task = task or infer_task(y_train)[0]
    if task == "classification":
        y_train, y_val = y_train.astype(np.int64, copy=False), y_val.astype(np.int64, copy=False)
        outputs = num_classes or int(max(y_train.max(), y_val.max())) + 1
    else:
        if y_train.ndim == 1:
            y_train, y_val = y_train[:, None], y_val[:, None]
        outputs = num_classes or (1 if task == "binary" else int(np.prod(y_train.shape[1:])))
    ds = Dataset(name, task, x_train, y_train, x_val, y_val, num_classes=outputs, scale=scale, val_name=val_name)
    ds.validate()
    return ds


def as_dataset(train, val=None) -> Dataset:
    """A Dataset, or (x, y) arrays for training and optionally (x, y) for validation."""
    if isinstance(train, Dataset):
        if val is not None:
            raise DataError("give validation data inside the Dataset, not as val=")
        return train
    if not isinstance(train, (tuple, list)) or len(train) != 2:
        raise DataError("train= must be an mpidl.data.Dataset or a pair (x, y) of arrays")
    if val is not None and (not isinstance(val, (tuple, list)) or len(val) != 2):
        raise DataError("val= must be a pair (x, y) of arrays")
    return ArrayDataset(*train, *(val if val is not None else (None, None)))
