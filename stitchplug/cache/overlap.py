"""Hide the cache's host work behind the forwards: a bounded writer thread and a bounded read-ahead.

:func:`~stitchplug.cache.writer.build_cache` runs the models on shard ``k + 1`` while a writer thread
stores shard ``k`` (alignment gather, dtype packing, the HDF5 file, its digests, fsync and the atomic
rename), and a read-ahead thread windows and tokenises the documents of the shards after that. Both
queues hold at most ``depth`` shards, so memory stays bounded (``depth`` + 2 shards of activations at
most: queued, being written, being computed). ``depth`` 0 is the synchronous path: everything in the
calling thread, in order, as before the overlap existed.

Nothing here decides what is written: each shard's bytes come from the same function on the same
inputs, and shards are written one at a time in order, so the cache is byte-identical at every depth
and a ``kill -9`` at any moment leaves finished shards plus at most one ``.tmp`` file (removed on
resume) exactly as before. An exception in either thread is re-raised, unchanged, in the calling
thread (the run stops with the same one-line error as the synchronous path); an exception in the
calling thread stops both threads (queued work is dropped, the shard being written is finished or
left as a ``.tmp``) before it propagates, so neither side can wait forever on the other. That holds
for a Ctrl-C that lands while the calling thread waits for a thread, too (:func:`_join`): no thread
of ours is ever left running into interpreter shutdown.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.05


class _Stopped(Exception):
    """The consumer went away: the read-ahead thread leaves quietly."""


def _start(target: Callable[[], None], name: str) -> tuple[threading.Thread, threading.Event]:
    """Start ``target`` in a daemon thread; the event is set when it has returned (see :func:`_join`)."""
    finished = threading.Event()

    def run() -> None:
        try:
            target()
        finally:
            finished.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, finished


def _join(thread: threading.Thread, finished: threading.Event) -> None:
    """Wait until ``thread``'s target has returned, even through a Ctrl-C. An interrupt that lands
    while the calling thread waits (the cache's last shard being written, say) would otherwise leave
    the thread running into interpreter shutdown, where a daemon thread inside h5py dies holding its
    lock: measured, the process then hangs or aborts (SIGABRT) instead of exiting 130. The wait is on
    an event, not ``Thread.join``: after an interrupted ``join`` CPython 3.11 may report the thread
    stopped while it still runs, so a second ``join`` returns at once. The interrupt is re-raised once
    the thread has stopped."""
    interrupted = None
    while True:
        try:
            while not finished.wait(_POLL_S):
                pass
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    thread.join()  # the target has returned: only the thread's own exit is left
    if interrupted is not None:
        raise interrupted


def _put(q: queue.Queue, item, alive: Callable[[], None]) -> None:
    """``q.put(item)`` that calls ``alive()`` (which raises to give up) while the queue is full."""
    while True:
        alive()
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


class ShardWriter:
    """Run ``store(*args)`` for each :meth:`submit` in a background thread, in order, at most ``depth``
    calls queued (``depth`` 0: in the calling thread). Use as a context manager: a normal exit waits
    for the queue to drain and re-raises the thread's error; an exception inside the ``with`` drops
    what is queued, lets the current call finish and propagates."""

    def __init__(self, store: Callable[..., object], depth: int, name: str = "stitchplug-cache-writer"):
        if depth < 0:
            raise ValueError(f"writer queue depth must be >= 0, not {depth}")
        self.store, self.depth = store, int(depth)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = None
        if self.depth:
            self._q: queue.Queue = queue.Queue(maxsize=self.depth)
            self._thread, self._finished = _start(self._run, name)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE or self._stop.is_set():
                return
            try:
                self.store(*item)
            except BaseException as exc:  # noqa: BLE001 (handed to the calling thread)
                self.error = exc
                return

    def check(self) -> None:
        """Re-raise the writer thread's error, if it had one (cheap: call it between batches)."""
        if self.error is not None:
            raise self.error

    def submit(self, *args) -> None:
        if self._thread is None:
            self.store(*args)
            return
        _put(self._q, args, self.check)

    def close(self) -> None:
        """Wait until everything submitted is stored; re-raise the thread's error."""
        if self._thread is not None:
            try:
                _put(self._q, _DONE, self.check)
                _join(self._thread, self._finished)
            except BaseException:  # e.g. Ctrl-C while waiting: never leave the thread running
                self.abort()
                raise
        self.check()

    def abort(self) -> None:
        """Drop what is queued, let the current call finish, stop the thread."""
        if self._thread is None:
            return
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        try:
            self._q.put_nowait(_DONE)
        except queue.Full:
            pass
        _join(self._thread, self._finished)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_ahead(items: Iterable[T], depth: int, name: str = "stitchplug-cache-read-ahead") -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer
    (``depth`` 0: plain iteration). The producer's error is raised in the consumer, at the point the
    failing item would have arrived; closing the generator (or an error in the consumer) stops the
    producer at its next item."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def alive() -> None:
        if stop.is_set():
            raise _Stopped

    def produce() -> None:
        try:
            for item in items:
                _put(q, (True, item), alive)
            _put(q, (True, _DONE), alive)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer)
            try:
                _put(q, (False, exc), alive)
            except _Stopped:
                return

    thread, finished = _start(produce, name)
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        _join(thread, finished)
