"""Write the browser's data (JSON for scripts, the same wrapped as JS for the pages) and its pages.

Browsers refuse ``fetch`` of a JSON file from ``file://``, so each data file also exists as
``site-data/<name>.js`` holding ``BROWSE.put("<name>", <the same JSON>);``, which a ``<script>`` tag
may load from disk. The pages and ``browse.js`` are vendored in this package (``static/``); no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ._core import write_text_atomic

SHARD = 64
"""Latent records per data file (``data/latents/NNNN.json`` holds latents ``NNNN*64 ..``)."""
STATIC = Path(__file__).parent / "static"
PAGES = ("index.html", "latent.html", "vectors.html", "browse.js", "browse.css")


def shard_name(i: int) -> str:
    return f"{i // SHARD:04d}"


def _put(out: Path, name: str, obj) -> None:
    """``data/<name>.json`` and ``site-data/<name>.js`` with the same content."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    write_text_atomic(out / "data" / f"{name}.json", text + "\n")
    write_text_atomic(out / "site-data" / f"{name}.js", f"BROWSE.put({json.dumps(name)}, {text});\n")


def write_shard(out: Path, first: int, records: list[dict]) -> str:
    """One data file of ``SHARD`` latent records (written while the next ones are built: memory stays
    bounded by one shard); returns its name."""
    name = f"latents/{shard_name(first)}"
    _put(out, name, {"first": first, "latents": records})
    return name


def write_site(out: Path, meta: dict, rows: list[dict], shards: set[str], docs: dict, vectors: dict) -> None:
    """The rest of the data (after every shard) and the pages; removes shards of an earlier, wider SAE."""
    for folder, ext in (("data", ".json"), ("site-data", ".js")):
        for old in (out / folder / "latents").glob(f"*{ext}"):
            if f"latents/{old.stem}" not in shards:
                old.unlink()
    _put(out, "docs", docs)
    _put(out, "vectors", vectors)
    _put(out, "index", {"meta": {**meta, "shard": SHARD}, "rows": rows})
    for page in PAGES:
        shutil.copyfile(STATIC / page, out / (page + ".tmp"))
        (out / (page + ".tmp")).replace(out / page)
