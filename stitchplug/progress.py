"""One progress helper for every long loop: a tqdm bar on a terminal, plain periodic lines elsewhere.

With stderr redirected to a file (a batch job, ``2> log``) a carriage-return bar writes thousands of
bar states into one log line; :func:`progress` then writes one line every ``STITCHPLUG_PROGRESS_EVERY``
seconds (default 30) and one at the end::

    [cache] 120k/2.00M tok (6%), 410 tok/s, ETA 1:16:24

:func:`quiet_loaders` does the same for the model loaders' bars (transformers, huggingface_hub):
off when stderr is not a terminal or when ``--no-progress`` was given.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable

from . import interrupt


def _fmt(n: float, scale: bool) -> str:
    if not scale:
        return f"{n:g}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}" if unit != "k" else f"{n / size:.0f}{unit}"
    return f"{int(n)}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LineProgress:
    """tqdm's small interface (``update``, ``set_postfix``, ``close``, iteration, ``with``) as plain lines."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", unit_scale: bool = False, initial: float = 0, every: float | None = None,
                 stream=None, **_: Any):
        self.iterable, self.desc, self.unit, self.scale = iterable, desc or "progress", unit, unit_scale
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.start_n = total, initial, initial
        self.every = float(os.environ.get("STITCHPLUG_PROGRESS_EVERY", 30)) if every is None else every
        self.stream = stream
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        done = _fmt(self.n, self.scale) + (f"/{_fmt(self.total, self.scale)}" if self.total else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = (f", ETA {_clock((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total
               else "")
        post = f", {self.postfix}" if self.postfix else ""
        return f"[{self.desc}] {done} {self.unit}{pct}, {_fmt(rate, self.scale) if rate >= 10 else f'{rate:.2g}'} " \
               f"{self.unit}/s{eta}{post}"

    def _emit(self) -> None:
        print(self.line(), file=self.stream or sys.stderr, flush=True)
        self.last = time.monotonic()

    def update(self, n: float = 1) -> None:
        interrupt.check()
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._emit()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LineProgress):
    def _emit(self) -> None:
        pass


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, **kw: Any):
    """A progress reporter with tqdm's interface: a tqdm bar when stderr is a terminal, plain lines
    (stage, done/total, rate, ETA) every few seconds when it is not, nothing when ``enabled`` is false."""
    if not enabled:
        return _Silent(iterable, total=total, desc=desc, unit=unit, **kw)
    if is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc or None, unit=unit, **kw)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, **kw)


def progress_quiet_loaders(enabled: bool = True) -> None:
    """:func:`quiet_loaders` under the name :mod:`stitchplug.api` exports."""
    quiet_loaders(enabled)


def quiet_loaders(enabled: bool = True) -> None:
    """Turn the model loaders' own bars (transformers, huggingface_hub) off when ``enabled`` is false
    (``--no-progress``) or stderr is not a terminal."""
    if enabled and is_terminal():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub (and transformers) import
    # Bare tqdm bars of the loaders (transformers' GGUF de-quantisation, which the embedded models go through,
    # ignores both switches above): tqdm reads TQDM_* when it is first imported, which for a `stitchplug`
    # command is after this (main() calls this first); stitchplug's own quiet reporters are not tqdm.
    os.environ["TQDM_DISABLE"] = "1"
    try:  # already imported: switch them off now (importing them here would cost seconds on every command)
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    except Exception:  # an older API: the environment variable still holds for later imports
        pass
