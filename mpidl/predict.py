"""Predictions of a trained run on new data, from the shell.

    python -m mpidl.predict RUN_DIR INPUT [--out predictions.csv] [--split val|train|all]

INPUT is any format --dataset reads (.npz, .npy folder, .csv/.tsv, .h5, image folder), a
single .npy of inputs, or unlabelled images (a folder of them, or one). It is read the way the run read its training data (the target column,
the array names, the image size, the seeded validation split, all from RUN_DIR/model.json),
and prepared exactly as training prepared it (scale, --normalize), so the accuracy printed
for the run's own validation data is the accuracy the run reported.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

from mpidl.errors import EXIT_OK, EXIT_USAGE, UserError


def _fail(message: str) -> int:
    print(f"mpidl.predict: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def read_inputs(path: str, desc: dict, split: str | None):
    """(inputs, targets or None, split name, file names or None) of `path`, chosen as the run chose them."""
    from mpidl.data.files import FileOptions, Rows, read_splits, validation_rows
    from mpidl.errors import DataError
    data = desc.get("data") or {}
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    lower = path.lower()
    loose = _loose_images(path)
    if loose:  # a folder of unlabelled images, or one image
        from mpidl.data.images import _import_pillow, decode_images
        if split not in (None, "all"):
            raise DataError(f"{path}: unlabelled images have no {split} split; use --split all")
        size = tuple(desc["sample_shape"][1:]) if len(desc.get("sample_shape") or ()) == 3 else None
        return decode_images(_import_pillow(path), loose, size), None, "all", [os.path.basename(f) for f in loose]
    if lower.endswith((".csv", ".tsv", ".txt")):
        return _table_inputs(path, desc, split)
    if lower.endswith(".npy") and not os.path.isdir(path):
        from mpidl.data.arrays import open_arrays
        if split not in (None, "all"):
            raise DataError(f"{path}: one .npy of inputs has no {split} split; use --split all")
        return open_arrays(path)["x"], None, "all", None
    image_size = data.get("image_size")
    options = FileOptions(x_key=data.get("x_key"), y_key=data.get("y_key"),
                          image_size=tuple(desc["sample_shape"][1:]) if image_size else None)
    try:
        s = read_splits(path, options)
    except DataError:
        from mpidl.data.arrays import open_arrays
        arrays = open_arrays(path) if (lower.endswith(".npz") or os.path.isdir(path)) else {}
        key = data.get("x_key") or "x"
        if key not in arrays or any(k.startswith("y") for k in arrays):
            raise
        s = None  # inputs without targets
        x, y = arrays[key], None
    if s is not None:
        x, y = s.x_train, _run_codes(s.y_train, s.class_names, desc)
    has_val = s is not None and s.x_val is not None
    fraction = data.get("val_fraction")
    if split is None:
        split = "val" if (has_val or fraction) else "all"
    if split == "val":
        if has_val:
            return s.x_val, _run_codes(s.y_val, s.class_names, desc), s.val_name, None
        if fraction:
            val, _ = validation_rows(len(x), fraction, data.get("seed", 0))
            return Rows(x, val), None if y is None else np.asarray(y)[val], "val", None
        raise DataError(f"{path}: no validation split (the run evaluated on its training data); "
                        "use --split all")
    if split == "train":
        if fraction and not has_val:
            _, train = validation_rows(len(x), fraction, data.get("seed", 0))
            return Rows(x, train), None if y is None else np.asarray(y)[train], "train", None
        return x, y, "train", None
    if has_val:
        raise DataError(f"{path}: has a training and a {s.val_name} split; choose --split train or val")
    return x, y, "all", None


def _loose_images(path: str) -> list[str]:
    """The image files of a folder without class folders (or the one image `path`)."""
    from mpidl.data.images import EXTENSIONS, class_folders, image_files
    if os.path.isfile(path):
        return [path] if path.lower().endswith(EXTENSIONS) else []
    if class_folders(path):
        return []
    return image_files(path)


def _run_codes(y, names, desc: dict):
    """Targets as the run's class codes: codes into the file's own `names` (an image folder's)
    or class names in the file, mapped through the run's class names."""
    if y is None:
        return None
    if names is not None and desc.get("class_names"):
        return _recode(np.asarray(names)[np.asarray(y)], desc["class_names"])
    if np.asarray(y[:1]).dtype.kind in "USO":
        return _recode(np.asarray(y).astype(str), desc.get("class_names") or [])
    return y


def _recode(names: np.ndarray, class_names: list) -> np.ndarray:
    """Class names -> the run's class codes (-1 for a class the run never saw)."""
    codes = {n: i for i, n in enumerate(class_names)}
    return np.array([codes.get(str(n), -1) for n in names], dtype=np.int64)


def _table_inputs(path: str, desc: dict, split):
    from mpidl.data.files import Rows, validation_rows
    from mpidl.data.table import parse_table, read_header
    from mpidl.errors import DataError
    data = desc.get("data") or {}
    header, _ = read_header(path)
    target = data.get("target")
    parsed = parse_table(path, target if target in header else None, need_target=False)
    features = [str(c) for c in parsed["features"]]
    wanted = desc.get("feature_names") or features
    missing = [c for c in wanted if c not in features]
    if missing:
        raise DataError(f"{path}: lacks the feature column(s) {', '.join(missing[:5])} the run trained on")
    x = parsed["x"][:, [features.index(c) for c in wanted]]
    y = parsed.get("y")
    if y is not None and y.dtype.kind in "USO":
        y = _recode(y.astype(str), desc.get("class_names") or [])
    elif y is not None and desc.get("class_names"):  # numeric labels of a run with named classes
        y = _recode(y.astype(str), desc["class_names"])
    fraction = data.get("val_fraction")
    if split is None:
        split = "val" if fraction else "all"
    if split in ("val", "train"):
        if not fraction:
            raise DataError(f"{path}: the run had no --val-fraction split of this table; use --split all")
        val, train = validation_rows(len(x), fraction, data.get("seed", 0))
        rows = val if split == "val" else train
        return Rows(x, rows), None if y is None else y[rows], split, None
    return x, y, "all", None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpidl.predict",
                                description="Predict with a trained run on new data (any --dataset format).")
    p.add_argument("run", metavar="RUN_DIR", help="the run's output folder (--out), or its weights.npz")
    p.add_argument("input", metavar="INPUT", help="a .npz, .npy, .csv/.tsv, .h5 file or an image folder")
    p.add_argument("--out", default="predictions.csv", help="CSV file to write (default predictions.csv)")
    p.add_argument("--split", choices=("val", "train", "all"),
                   help="which samples of INPUT (default: its validation split if it has one, else all)")
    p.add_argument("--batch-size", type=int, default=1000, help="samples per forward pass (default 1000)")
    args = p.parse_args(argv)
    from mpidl.inference import load
    try:
        predictor = load(args.run)
        x, y, split, files = read_inputs(args.input, predictor.description, args.split)
        want = tuple(predictor.description.get("sample_shape") or x.shape[1:])
        if tuple(x.shape[1:]) != want:
            raise UserError(f"{args.input}: samples have shape {tuple(x.shape[1:])}, the run trained on {want}")
        labels = predictor.predict(x, args.batch_size)
        _write_csv(args.out, labels, y, predictor, files)
    except UserError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.out}: cannot write ({exc.strerror or exc})")
    line = f"predicted {len(labels)} samples ({split}) of {args.input}; wrote {args.out}"
    if y is not None:
        line += "; " + _score(predictor, labels, y)
    print(line, flush=True)
    return EXIT_OK


def _score(predictor, labels, y) -> str:
    if predictor.task == "regression":
        err = np.asarray(labels, dtype=np.float64).reshape(len(y), -1) - np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return f"mean squared error {float(np.mean(err ** 2)):.6g}"
    codes = predictor.class_codes(labels)
    y = np.asarray(y).reshape(-1)
    return f"accuracy {float(np.mean(codes == y)):.4f} ({int(np.sum(codes == y))} of {len(y)})"


def _write_csv(path: str, labels, y, predictor, files=None) -> None:
    from mpidl.checkpoint import atomic_write
    values = np.asarray(labels)
    names = predictor.class_names
    rows = []
    header = ["row"] + (["file"] if files else [])
    if values.ndim == 2 and values.shape[1] > 1:
        header += [f"prediction_{j}" for j in range(values.shape[1])]
    else:
        header.append("prediction")
    if y is not None:
        header.append("target")
    for i in range(len(values)):
        row = [i] + ([files[i]] if files else []) + (list(values[i]) if values.ndim == 2 and values.shape[1] > 1 else [np.ravel(values[i])[0]])
        if y is not None:
            t = np.ravel(y[i]) if np.ndim(y[i]) else [y[i]]
            row.append(names[int(t[0])] if names and 0 <= int(t[0]) < len(names) else
                       (t[0] if len(t) == 1 else ";".join(map(str, t))))
        rows.append(row)

    def write(f):
        import io
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(header)
        w.writerows(rows)
        f.write(text.getvalue().encode())
    atomic_write(path, write)


if __name__ == "__main__":
    sys.exit(main())
