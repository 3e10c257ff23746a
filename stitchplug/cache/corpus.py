"""Open a corpus by name: a registered corpus, ``file:PATH`` (local .jsonl/.json/.txt/.parquet),
``hub:NAME`` (a Hugging Face hub dataset, when the hub is reachable) or ``mix:A=w,B=w,...`` (a
deterministic, character-weighted interleaving of other corpora, :func:`mix_corpus`).

Every corpus is an iterable of dicts with at least ``text`` (str) and ``doc_id`` (str, stable),
plus any extra fields (``title``, ``topic`` ...), in a deterministic order.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import CacheError, ConfigError, StitchplugError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}
OFFLINE_CORPORA = "wiki-en, wiki-fr, wiki-es, file:PATH or mix:wiki-en=0.6,wiki-fr=0.2,wiki-es=0.2"
MIX_PREFIX = "mix:"
HELDOUT_FALLBACK_START = 9000
"""Where held-out documents start when a cache records neither its slice's end nor its size (old caches)."""


def _default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "stitchplug-datasets")


def _records(rows: Iterable[dict], label: str, text_field: str = "text") -> Iterator[dict]:
    for i, row in enumerate(rows):
        if text_field not in row:
            raise StitchplugError(f"corpus {label!r} has no {text_field!r} field (fields: {', '.join(sorted(row))})")
        rec = dict(row)
        text = rec.pop(text_field)
        if not isinstance(text, str):
            what = f"a null {text_field!r}" if text is None else f"a {text_field!r} of type {type(text).__name__}"
            raise StitchplugError(f"corpus {label!r}: document {i} has {what}, not a string")
        rec["text"] = text
        doc_id = rec.get("doc_id", rec.get("id"))
        rec["doc_id"] = str(doc_id) if doc_id is not None else f"{label}:{i}"
        yield rec


def file_corpus(path: str, cache_dir: str | None = None, text_field: str = "text") -> Iterator[dict]:
    """Documents from a local file through ``datasets`` (offline). ``.txt``: one document per
    paragraph (blank-line separated); ``.jsonl``/``.json``/``.parquet``: one per row."""
    p = Path(path)
    builder = FILE_BUILDERS.get(p.suffix.lower())
    if builder is None:
        raise StitchplugError(f"corpus file {path} must end in {', '.join(FILE_BUILDERS)}")
    if not p.is_file():
        raise StitchplugError(f"corpus file not found: {path}")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    if p.stat().st_size == 0:
        raise StitchplugError(f"corpus file {path} is empty (no documents)")
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(p.resolve()), split="train",
                                   cache_dir=cache_dir or _default_cache_dir(), **kwargs)
        yield from _records(ds, p.name, text_field)
    except StitchplugError:
        raise
    except Exception as exc:  # malformed JSON / parquet, not UTF-8: one line naming the real cause
        raise StitchplugError(f"cannot read corpus file {path}: {_root_cause(exc)}") from None


def _root_cause(exc: BaseException) -> str:
    """The parser's message under ``datasets``'s generic "An error occurred while generating the dataset"."""
    while type(exc).__name__ == "DatasetGenerationError" and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def hub_corpus(name: str, split: str = "train", text_field: str = "text") -> Iterator[dict]:
    """Documents of a hub dataset, streamed. Offline (or hub unreachable): a one-line error."""
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    msg = (f"corpus 'hub:{name}' needs the Hugging Face hub, which is not reachable (offline); "
           f"use {OFFLINE_CORPORA}")
    if offline:
        raise StitchplugError(msg)
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
        rows = iter(ds)
        first = next(rows)
    except Exception as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise StitchplugError(f"{msg} ({type(exc).__name__}: {detail})") from None
    yield from _records(itertools.chain([first], rows), f"hub:{name}", text_field)


def parse_mix(name: str) -> list[tuple[str, float]]:
    """``mix:A=0.6,B=0.4`` -> ``[("A", 0.6), ("B", 0.4)]`` with the weights normalised to sum 1
    (``mix:A,B``: equal weights). Components are any corpus names but ``mix:``; each appears once.
    Bad syntax is a one-line :class:`ConfigError` (exit 2 from the CLI)."""
    import math

    body = name[len(MIX_PREFIX):]
    parts: list[tuple[str, float]] = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"corpus {name!r}: empty component (syntax: mix:wiki-en=0.6,wiki-fr=0.4)")
        comp, sep, w = item.rpartition("=") if "=" in item else (item, "", "1")
        comp = comp.strip()
        if not comp:
            raise ConfigError(f"corpus {name!r}: a weight without a corpus name in {item!r}")
        try:
            weight = float(w)
        except ValueError:
            raise ConfigError(f"corpus {name!r}: weight {w!r} of {comp!r} is not a number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"corpus {name!r}: weight of {comp!r} must be a positive finite number, not {w}")
        if comp.startswith(MIX_PREFIX):
            raise ConfigError(f"corpus {name!r}: a mix cannot contain another mix")
        if any(comp == c for c, _ in parts):
            raise ConfigError(f"corpus {name!r}: {comp!r} appears twice")
        parts.append((comp, weight))
    if len(parts) < 2:
        raise ConfigError(f"corpus {name!r}: a mix needs at least two corpora")
    total = sum(w for _, w in parts)
    return [(c, w / total) for c, w in parts]


def mix_corpus(parts: list[tuple[str, float]], cache_dir: str | None = None) -> Iterator[dict]:
    """Interleave corpora so that every prefix holds each one's share of *characters* as closely as
    whole documents allow: the next document comes from the corpus with the least characters emitted
    per unit weight (ties: the earlier one). Deterministic, so document indices are stable. The mix
    ends when the corpus whose turn it is runs out, so the shares hold to the end. ``doc_id`` becomes
    ``NAME:doc_id`` and each record gains ``corpus`` (its component's name)."""
    its = [iter(open_corpus(c, cache_dir=cache_dir)) for c, _ in parts]
    chars = [0] * len(parts)
    while True:
        i = min(range(len(parts)), key=lambda j: (chars[j] / parts[j][1], j))
        doc = next(its[i], None)
        if doc is None:
            return
        chars[i] += len(doc["text"])
        yield {**doc, "doc_id": f"{parts[i][0]}:{doc['doc_id']}", "corpus": parts[i][0]}


def corpus_files(name: str) -> dict[str, str]:
    """``{label: path}`` of the local files a corpus reads (``file:`` itself, or a ``mix:``'s file
    components), so a run stage can fingerprint them as inputs."""
    if name.startswith(MIX_PREFIX):
        return {f"corpus:{comp}": p for comp, _ in parse_mix(name) for p in corpus_files(comp).values()}
    return {"corpus": name[len("file:"):]} if name.startswith("file:") else {}


def corpus_fingerprint(name: str) -> str | None:
    """A digest of a ``file:`` corpus's bytes (so an edited file is a different cache); for a
    ``mix:``, a digest over its components' fingerprints (None when none is a file); ``None`` for
    registered and hub corpora, whose identity is their name."""
    if name.startswith(MIX_PREFIX):
        prints = [corpus_fingerprint(c) for c, _ in parse_mix(name)]
        if all(p is None for p in prints):
            return None
        import hashlib

        return hashlib.blake2b("|".join(p or "" for p in prints).encode(), digest_size=16).hexdigest()
    if not name.startswith("file:"):
        return None
    import hashlib

    path = Path(name[len("file:"):])
    try:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise StitchplugError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def open_corpus(name: str, start: int = 0, limit: int | None = None, cache_dir: str | None = None,
                **kwargs) -> Iterator[dict]:
    """Documents ``start .. start+limit`` of corpus ``name`` as dicts with ``text`` and ``doc_id``.

    Errors (unknown name, missing file, unreachable hub) are raised as :class:`StitchplugError`
    before the first document is returned.
    """
    if name.startswith("file:"):
        docs = file_corpus(name[len("file:"):], cache_dir=cache_dir, **kwargs)
    elif name.startswith("hub:"):
        docs = hub_corpus(name[len("hub:"):], **kwargs)
    elif name.startswith(MIX_PREFIX):
        docs = mix_corpus(parse_mix(name), cache_dir=cache_dir)
    else:
        from ..plugins import registry

        docs = iter(registry().get("corpora", name).factory(**kwargs))
    docs = iter(docs)
    try:  # run the generator up to its first document so set-up errors surface here
        first = next(docs)
    except StopIteration:
        return iter(())
    stop = None if limit is None else start + limit
    return itertools.islice(itertools.chain([first], docs), start, stop)


def heldout_documents(cache, n_docs: int, skip: int = 0, doc_start: int | None = None,
                      cache_config: Any = None) -> list[dict]:
    """``n_docs`` documents (all fields) of the cache's corpus after the documents the cache used
    (``skip`` more first): the held-out text of stitched losses, the feature analysis and evaluators.

    Where the slice ends comes from the cache's attributes (``doc_end``, else ``doc_start + n_docs``),
    else from ``doc_start``; the corpus from the cache, else ``cache_config.corpus``.
    """
    attrs = getattr(cache, "attrs", {}) or {}

    def attr(name: str, default=None):
        return attrs[name] if attrs.get(name) is not None else default

    def configured(name: str, default=None):  # the run's cache section, a model or a dict
        if isinstance(cache_config, dict):
            return cache_config.get(name, default)
        return getattr(cache_config, name, default)

    if doc_start is None:
        end = attr("doc_end")
        if end is None and attr("n_docs") is not None:
            end = int(attr("doc_start", configured("doc_start", 0))) + int(attr("n_docs"))
        doc_start = int(end) if end is not None else HELDOUT_FALLBACK_START
    corpus = attr("corpus", configured("corpus"))
    if corpus is None:
        raise CacheError("the cache names no corpus to draw held-out documents from")
    return list(open_corpus(corpus, start=doc_start + skip, limit=n_docs))
