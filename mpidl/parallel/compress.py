"""16-bit gradient encodings for communication, in NumPy only (no MPI here).

Both encodings travel as uint16 words, so MPI sees plain 16-bit integers and the sum is
done by :func:`add_encoded` (an MPI user-defined operation in ``mpidl.parallel.comm``) which
decodes to float32, adds, and encodes again.

- ``fp16``: IEEE half precision (NumPy's float16). 11-bit significand, largest value
  65504. Callers pre-scale by 1/ranks so that every partial sum stays within the range
  of the largest single contribution and cannot overflow.
- ``bf16``: bfloat16, the upper 16 bits of a float32, rounded to nearest even. NumPy has
  no bfloat16 type, so it is emulated with integer arithmetic on the float32 bits.
  8-bit significand, the full float32 range: no overflow, coarser rounding.
"""

from __future__ import annotations

import numpy as np

CODECS = ("fp16", "bf16")


def bf16_encode(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float array -> uint16 bfloat16 words, round to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds to nearest even when the low
    # half is dropped; NaN payloads are forced to a quiet NaN so they stay NaN.
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    words = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        words[nan] = 0x7FC0
    if out is None:
        return words
    out[...] = words
    return out


def bf16_decode(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 bfloat16 words -> float32 (exact: every bfloat16 is a float32)."""
    values = (words.astype(np.uint32) << 16).view(np.float32)
    if out is None:
        return values
    out[...] = values
    return out


def fp16_encode(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow gives inf, which the caller checks for
        words = np.asarray(x).astype(np.float16).view(np.uint16)
    if out is None:
        return words
    out[...] = words
    return out


def fp16_decode(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    values = words.view(np.float16)
    if out is None:
        return values.astype(np.float32)
    out[...] = values
    return out


ENCODE = {"fp16": fp16_encode, "bf16": bf16_encode}
DECODE = {"fp16": fp16_decode, "bf16": bf16_decode}


def add_encoded(codec: str, incoming: np.ndarray, inout: np.ndarray) -> None:
    """inout += incoming for two uint16 arrays in `codec`, added in float32 and rounded once."""
    decode = DECODE[codec]
    total = decode(incoming)  # a fresh float32 array
    total += decode(inout)
    ENCODE[codec](total, out=inout)
