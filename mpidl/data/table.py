"""Tables: a .csv or .tsv file with a header row, one sample per row.

``--target NAME`` names the column holding the targets (default: a column called target,
label, class or y); every other column is a numeric feature. Numeric targets are labels
(integers) or values (floats); any other targets are class names, coded 0, 1, ... in sorted
order, and the names are saved with the run. The text is parsed once, into the dataset cache,
and memory-mapped from there.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from mpidl.data.cache import cached_arrays
from mpidl.data.files import FileOptions, Splits
from mpidl.errors import DataError

DEFAULT_TARGETS = ("target", "label", "class", "y")


def delimiter_of(path: str, header_line: str) -> str:
    if path.lower().endswith(".tsv") or ("\t" in header_line and "," not in header_line):
        return "\t"
    return ","


def read_header(path: str) -> tuple[list[str], str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            first = f.readline()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text table")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})")
    if not first.strip():
        raise DataError(f"{path}: empty; expected a header row naming the columns")
    delimiter = delimiter_of(path, first)
    header = [c.strip() for c in next(csv.reader([first], delimiter=delimiter))]
    if len(set(header)) != len(header) or any(not c for c in header):
        raise DataError(f"{path}: line 1 must name every column once (a header row), found {header[:8]}")
    return header, delimiter


def target_column(path: str, header: list[str], target: str | None) -> int:
    if target is not None:
        if target not in header:
            raise DataError(f"{path}: no column {target!r} for --target (columns: {', '.join(header[:12])})")
        return header.index(target)
    for name in DEFAULT_TARGETS:
        if name in header:
            return header.index(name)
    raise DataError(f"{path}: give --target NAME, the column holding the targets "
                    f"(columns: {', '.join(header[:12])})")


def parse_table(path: str, target: str | None, need_target: bool = True) -> dict:
    """{'x': float64 (rows, features), 'y': targets (numbers or strings), 'features': names}."""
    header, delimiter = read_header(path)
    t = target_column(path, header, target) if (need_target or target) else None
    if t is None:
        t = next((header.index(n) for n in DEFAULT_TARGETS if n in header), None)
    features = [c for i, c in enumerate(header) if i != t]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {header[t]!r}")
    width = len(header)
    x = np.empty((1024, len(features)))
    targets, lines = [], []
    n = 0
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter=delimiter)
        next(rows)
        try:
            for row in rows:
                line = rows.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != width:
                    raise DataError(f"{path}: line {line} has {len(row)} fields but the header has {width}")
                if t is not None:
                    targets.append(row.pop(t).strip())
                    lines.append(line)
                if n == len(x):
                    x = np.resize(x, (2 * len(x), len(features)))
                try:
                    x[n] = np.array(row, dtype=np.float64)
                except ValueError:
                    bad = next(i for i, v in enumerate(row) if not _is_number(v))
                    raise DataError(f"{path}: line {line}, column {features[bad]!r}: {row[bad].strip()!r} "
                                    "is not a number (features must be numeric)")
                n += 1
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text table")
        except csv.Error as exc:
            raise DataError(f"{path}: line {rows.line_num}: {exc}")
    x = x[:n]
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        col = int(np.flatnonzero(~np.isfinite(x[bad[0]]))[0])
        raise DataError(f"{path}: line {_line_of(path, bad[0])}, column {features[col]!r}: NaN or infinite value")
    out = {"x": x, "features": np.array(features)}
    if t is not None:
        out["y"] = _targets(path, targets, lines, header[t])
    return out


def _line_of(path: str, row: int) -> int:
    """The file line of data row `row` (skipping blank lines as the parser did)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter=delimiter_of(path, f.readline()))
        n = -1
        for r in rows:
            if r and not (len(r) == 1 and not r[0].strip()):
                n += 1
                if n == row:
                    return rows.line_num + 1
    return row + 2


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _targets(path: str, values: list[str], lines: list[int], column: str) -> np.ndarray:
    """Integers -> int64 labels, other numbers -> float64 values, anything else -> strings."""
    if not values:
        raise DataError(f"{path}: no data rows below the header")
    empty = next((i for i, v in enumerate(values) if not v), None)
    if empty is not None:
        raise DataError(f"{path}: line {lines[empty]}: the target column {column!r} is empty")
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        y = np.array(values, dtype=np.float64)
    except ValueError:
        return np.array(values)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise DataError(f"{path}: line {lines[bad[0]]}: target {values[bad[0]]!r} is NaN or infinite")
    return y


def read_table(path: str, options: FileOptions) -> Splits:
    header, _ = read_header(path)
    column = header[target_column(path, header, options.target)]
    if os.path.getsize(path) > 64 * 2**20:
        print(f"mpidl: parsing {path} once into the dataset cache", file=sys.stderr, flush=True)
    arrays = cached_arrays(f"table-{os.path.basename(path)}-{column}", [path], ("x", "y", "features"),
                           lambda: parse_table(path, column))
    return Splits(path, arrays["x"], arrays["y"], feature_names=[str(c) for c in arrays["features"]],
                  keys={"target": column})
