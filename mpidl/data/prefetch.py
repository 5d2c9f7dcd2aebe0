"""Batches prepared ahead in a background thread while the current step computes.

Preparing a batch (gather the rank's rows, convert to float, augment) is NumPy copying
and arithmetic, which releases the GIL, so it runs beside the training thread's BLAS.
One producer thread walks the source in order and calls ``prepare`` in that order, so
batches, and any random numbers that augmentation draws, are exactly those of preparing
inline. ``depth`` bounds how far ahead it runs (and the memory it holds).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    def __init__(self, source: Iterable, prepare: Callable, depth: int = 2,
                 on_prepared: Callable[[float, float], None] | None = None):
        """Yields ``(item, prepare(item))`` for each item of ``source``.
        on_prepared(start, end) is told when each batch was made (for the timeline)."""
        if depth < 1:
            raise ValueError("prefetch depth must be at least 1")
        self._source = iter(source)
        self._prepare = prepare
        self._on_prepared = on_prepared
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="mpidl-prefetch", daemon=True)
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                batch = self._prepare(item)
                if self._on_prepared is not None:
                    self._on_prepared(t0, time.perf_counter())
                if not self._put((item, batch)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the training thread, raised there
            self._put(_Failure(exc))

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        value = self._queue.get()
        if value is _END:
            self._done = True
            raise StopIteration
        if isinstance(value, _Failure):
            self._done = True
            raise value.exc
        return value

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InlineBatches:
    """The same interface with no thread: each batch prepared when asked for."""

    def __init__(self, source: Iterable, prepare: Callable):
        self._source = iter(source)
        self._prepare = prepare

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._source)
        return item, self._prepare(item)

    def close(self) -> None:
        pass
