"""Binary probing tasks (text -> 0/1 label) from three sources, each addressed by a spec string:

- ``wiki-topic:<Topic>``  one-vs-rest on the ``topic`` field of the offline ``wiki-en`` corpus
  (People, Biology, Geography, Physical sciences, Society, Arts, Technology, History, Everyday life,
  Philosophy, Mathematics; a unique case-insensitive prefix of the full label is enough), with the
  negatives drawn round-robin across the other ten topics so each is equally represented.
- ``sae-probes:<name>``   a dataset shipped inside the ``sae-probes`` package (Kantamneni et al. 2025):
  ``sae_probes/data/cleaned_data/<name>.csv.zst`` with columns ``prompt`` and ``target``. The package
  is located, never imported (its import pulls heavy dependencies); the file is read with pandas.
- ``sae-probes:draw:N[:SEED]``  N datasets drawn without replacement by a seeded random choice
  (default seed 0) from the binary ``sae-probes`` datasets (0/1 targets, at least ``MIN_PER_CLASS``
  examples of each class); :func:`expand_specs` replaces it by the drawn ``sae-probes:<name>`` specs.
- ``file:PATH``           a csv / jsonl file (read by the core's ``examples_from_file``) or parquet, with a text
  column (``text``, ``prompt`` or ``sentence``) and a 0/1 label column (``label`` or ``target``).

Every task is balanced (equal classes) and subsampled deterministically from ``seed`` to at most
``max_examples`` rows. Bad specs, missing columns, single-class or too-small tasks raise a one-line
:class:`~stitchplug.errors.StitchplugError`.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitchplug.api import StitchplugError

WIKI_TOPICS = ("People", "Biology and health sciences", "Geography", "Physical sciences",
               "Society and social sciences", "Arts", "Technology", "History", "Everyday life",
               "Philosophy and religion", "Mathematics")
SAE_PROBES_INSTALL = "pip install --no-deps sae-probes==0.4.2 zstandard"
TEXT_COLUMNS = ("text", "prompt", "sentence")
LABEL_COLUMNS = ("label", "target")
MIN_PER_CLASS = 10


@dataclass
class Task:
    """A balanced binary task: ``texts[i]`` has label ``labels[i]`` (0 or 1)."""

    name: str
    texts: list[str]
    labels: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> tuple[int, int]:
        return int((self.labels == 0).sum()), int((self.labels == 1).sum())


def _balance(name: str, texts: list[str], labels: np.ndarray, max_examples: int | None, seed: int,
             min_per_class: int, source: str) -> Task:
    """Equal numbers of each class (at most ``max_examples`` in all), order shuffled by ``seed``."""
    labels = np.asarray(labels).astype(np.int64)
    classes = set(np.unique(labels).tolist())
    if classes - {0, 1}:
        raise StitchplugError(f"task {name!r}: labels must be 0/1, found {sorted(classes)[:5]}")
    if len(classes) < 2:
        raise StitchplugError(f"task {name!r} has a single class (every label is {labels[0] if len(labels) else '-'}); "
                              "a probe needs both")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n = min(len(pos), len(neg))
    if max_examples is not None:
        n = min(n, max_examples // 2)
    if n < min_per_class:
        raise StitchplugError(f"task {name!r} has too few examples: {n} per class after balancing "
                              f"(need at least {min_per_class})")
    keep = np.concatenate([rng.permutation(pos)[:n], rng.permutation(neg)[:n]])
    keep = keep[rng.permutation(len(keep))]
    return Task(name, [texts[i] for i in keep], labels[keep], source)


def _resolve_topic(topic: str) -> str:
    low = topic.strip().lower()
    hits = [t for t in WIKI_TOPICS if t.lower() == low] or [t for t in WIKI_TOPICS if t.lower().startswith(low)]
    if len(hits) != 1 or not low:
        raise StitchplugError(f"unknown wiki topic {topic!r} (known: {', '.join(WIKI_TOPICS)})")
    return hits[0]


def wiki_topic_task(topic: str, max_examples: int | None = None, seed: int = 0,
                    min_per_class: int = MIN_PER_CLASS) -> Task:
    """One-vs-rest on ``wiki-en``'s topic; negatives round-robin over the other topics."""
    from stitchplug.api import open_corpus

    topic = _resolve_topic(topic)
    by_topic: dict[str, list[str]] = {t: [] for t in WIKI_TOPICS}
    for doc in open_corpus("wiki-en"):  # the registered corpus, through the registry
        if doc["topic"] in by_topic:
            by_topic[doc["topic"]].append(doc["text"])
    rng = np.random.default_rng(seed)
    pos = by_topic[topic]
    n = len(pos) if max_examples is None else min(len(pos), max_examples // 2)
    others = [list(np.asarray(by_topic[t], dtype=object)[rng.permutation(len(by_topic[t]))])
              for t in WIKI_TOPICS if t != topic]
    neg: list[str] = []
    depth = 0
    while len(neg) < n and any(depth < len(o) for o in others):
        neg.extend(o[depth] for o in others if depth < len(o))
        depth += 1
    neg = neg[:n]
    texts = list(pos) + neg
    labels = np.array([1] * len(pos) + [0] * len(neg))
    return _balance(f"wiki-topic:{topic}", texts, labels, max_examples, seed, min_per_class, "wiki-en topic field")


def sae_probes_dir() -> Path:
    """The ``cleaned_data`` folder inside the installed ``sae-probes`` package (located, not imported)."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise StitchplugError(f"sae-probes tasks need the sae-probes package: {SAE_PROBES_INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "cleaned_data"


def sae_probes_names() -> list[str]:
    return sorted(p.name[: -len(".csv.zst")] for p in sae_probes_dir().glob("*.csv.zst"))


def sae_probes_task(name: str, max_examples: int | None = None, seed: int = 0,
                    min_per_class: int = MIN_PER_CLASS) -> Task:
    import pandas as pd

    path = sae_probes_dir() / f"{name}.csv.zst"
    if not path.is_file():
        names = sae_probes_names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(names)} datasets ship with the package)"
        raise StitchplugError(f"unknown sae-probes dataset {name!r}{hint}")
    try:
        df = pd.read_csv(path, compression="zstd")
    except ImportError:
        raise StitchplugError(f"reading sae-probes files needs zstandard: pip install zstandard") from None
    return _from_columns(f"sae-probes:{name}", df, ("prompt",), ("target",), max_examples, seed, min_per_class,
                         f"sae-probes {path.name}")


def _from_columns(name: str, df, text_cols, label_cols, max_examples, seed, min_per_class, source) -> Task:
    cols = list(df.columns)
    text = next((c for c in text_cols if c in cols), None)
    label = next((c for c in label_cols if c in cols), None)
    if text is None or label is None:
        want = "a text column (" + "/".join(text_cols) + ")" if text is None else "a label column (" + "/".join(label_cols) + ")"
        raise StitchplugError(f"task {name!r} has no {want}; its columns are {', '.join(map(str, cols)) or 'none'}")
    df = df[[text, label]].dropna()
    texts = [str(t) for t in df[text].tolist()]
    return _balance(name, texts, _label01(name, df[label].tolist()), max_examples, seed, min_per_class, source)


def _header(p: Path) -> list[str]:
    """Column names of a csv (header row) or jsonl (first record) file, without reading it all."""
    import csv
    import json

    with p.open(newline="", encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if p.suffix.lower() == ".csv":
        return next(csv.reader([first]), [])
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return []
    return list(rec) if isinstance(rec, dict) else []


def _label01(name: str, values) -> np.ndarray:
    table = {"0": 0, "1": 1, "false": 0, "true": 1, "0.0": 0, "1.0": 1}
    out = []
    for v in values:
        key = str(v).strip().lower()
        if key not in table:
            raise StitchplugError(f"task {name!r}: the label column must hold 0/1 labels, found {v!r}")
        out.append(table[key])
    return np.asarray(out, dtype=np.int64)


def file_task(path: str, max_examples: int | None = None, seed: int = 0,
              min_per_class: int = MIN_PER_CLASS) -> Task:
    """csv/jsonl through the core's :func:`examples_from_file` (columns detected from the header);
    parquet through pandas (the core reads csv and jsonl only)."""
    from stitchplug.api import examples_from_file

    p = Path(path)
    name = f"file:{path}"
    if not p.is_file():
        raise StitchplugError(f"task file not found: {path}")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".parquet"):
        raise StitchplugError(f"task file {path} must end in .csv, .jsonl or .parquet")
    if suffix == ".parquet":
        try:
            import pandas as pd

            df = pd.read_parquet(p)
        except Exception as exc:  # parser errors of any kind: one line
            first = (str(exc).splitlines() or [""])[0][:200]
            raise StitchplugError(f"cannot read task file {path}: {type(exc).__name__}: {first}") from None
        cols = [str(c) for c in df.columns]
    else:
        cols = _header(p)
    text = next((c for c in TEXT_COLUMNS if c in cols), None)
    label = next((c for c in LABEL_COLUMNS if c in cols), None)
    if text is None or label is None:
        want = ("a text column (" + "/".join(TEXT_COLUMNS) + ")" if text is None
                else "a label column (" + "/".join(LABEL_COLUMNS) + ")")
        raise StitchplugError(f"task {name!r} has no {want}; its columns are {', '.join(cols) or 'none'}")
    if suffix == ".parquet":
        df = df[[text, label]].dropna()
        texts, raw = [str(t) for t in df[text].tolist()], df[label].tolist()
    else:
        ex = examples_from_file(p, text_field=text, label_field=label)
        texts, raw = [e.text for e in ex], [e.label for e in ex]
    return _balance(name, texts, _label01(name, raw), max_examples, seed, min_per_class, str(p))


@functools.lru_cache(maxsize=1)
def binary_sae_probes() -> tuple[str, ...]:
    """The sae-probes datasets a binary probe can use: the ``target`` column holds exactly two values,
    both 0/1 (or true/false), with at least ``MIN_PER_CLASS`` rows each (reads every file's target
    column once per process, a few seconds)."""
    import pandas as pd

    out = []
    for name in sae_probes_names():
        try:
            col = pd.read_csv(sae_probes_dir() / f"{name}.csv.zst", compression="zstd", usecols=["target"])["target"]
            labels = _label01(name, col.dropna().tolist())
        except (StitchplugError, ValueError, ImportError):
            continue
        if min(int((labels == 0).sum()), int((labels == 1).sum())) >= MIN_PER_CLASS:
            out.append(name)
    return tuple(out)


DRAW_FORM = "sae-probes:draw:N[:SEED]"


def parse_draw(arg: str) -> tuple[int, int] | None:
    """``(N, SEED)`` for the argument of ``sae-probes:draw:N[:SEED]`` (``arg`` = ``draw:N[:SEED]``),
    ``None`` when ``arg`` is a dataset name; one-line error for a malformed draw."""
    if not arg.startswith("draw:"):
        return None
    parts = arg.split(":")[1:]
    try:
        if not 1 <= len(parts) <= 2:
            raise ValueError
        n, seed = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise StitchplugError(f"task 'sae-probes:{arg}' must look like {DRAW_FORM} (integers)") from None
    if n < 1 or seed < 0:
        raise StitchplugError(f"task 'sae-probes:{arg}': N must be at least 1 and SEED not negative")
    return n, seed


def draw_sae_probes(n: int, seed: int = 0) -> list[str]:
    """``n`` binary sae-probes dataset names drawn without replacement by ``numpy``'s
    ``default_rng(seed)`` from the sorted list of :func:`binary_sae_probes` (in draw order)."""
    names = binary_sae_probes()
    if n > len(names):
        raise StitchplugError(f"cannot draw {n} sae-probes tasks: {len(names)} binary datasets ship with the package")
    pick = np.random.default_rng(seed).choice(len(names), size=n, replace=False)
    return [names[int(i)] for i in pick]


def expand_specs(specs: list[str]) -> list[str]:
    """The one place task specs are parsed: every spec checked (:func:`check_spec`), each
    ``sae-probes:draw:N[:SEED]`` replaced by its drawn ``sae-probes:<name>`` specs; a task named twice
    (by hand or by a draw) is an error."""
    out: list[str] = []
    for spec in specs:
        check_spec(spec)
        kind, _, arg = spec.partition(":")
        drawn = parse_draw(arg) if kind == "sae-probes" else None
        out.extend([f"sae-probes:{name}" for name in draw_sae_probes(*drawn)] if drawn else [spec])
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:
        raise StitchplugError(f"task {twice[0]} is listed twice (by hand or by a draw)")
    return out


def check_spec(spec: str) -> None:
    """Cheap validation of a task spec before anything runs (names, files); one-line error."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise StitchplugError(f"task {spec!r} must look like wiki-topic:<Topic>, sae-probes:<name>, "
                              f"{DRAW_FORM} or file:PATH")
    if kind == "sae-probes" and parse_draw(arg) is not None:
        if not sae_probes_dir().is_dir():
            raise StitchplugError(f"sae-probes tasks need the sae-probes package: {SAE_PROBES_INSTALL}")
        return
    if kind == "wiki-topic":
        _resolve_topic(arg)
    elif kind == "sae-probes":
        if not (sae_probes_dir() / f"{arg}.csv.zst").is_file():
            sae_probes_task(arg)  # raises the error with suggestions
    elif kind == "file":
        if not Path(arg).is_file():
            raise StitchplugError(f"task file not found: {arg}")
    else:
        raise StitchplugError(f"unknown task source {kind!r} in {spec!r} (known: wiki-topic, sae-probes, file)")


def load_task(spec: str, max_examples: int | None = None, seed: int = 0,
              min_per_class: int = MIN_PER_CLASS) -> Task:
    """The task addressed by ``spec`` (see the module docstring)."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise StitchplugError(f"task {spec!r} must look like wiki-topic:<Topic>, sae-probes:<name> or file:PATH")
    if kind == "sae-probes" and parse_draw(arg) is not None:
        raise StitchplugError(f"task {spec!r} is a draw: expand it first (expand_specs)")
    loaders = {"wiki-topic": wiki_topic_task, "sae-probes": sae_probes_task, "file": file_task}
    if kind not in loaders:
        raise StitchplugError(f"unknown task source {kind!r} in {spec!r} (known: {', '.join(loaders)})")
    return loaders[kind](arg, max_examples=max_examples, seed=seed, min_per_class=min_per_class)
