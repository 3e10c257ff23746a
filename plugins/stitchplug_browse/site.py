"""Write the browser's data (JSON for scripts, the same wrapped as JS for the pages) and its pages.

Browsers refuse ``fetch`` of a JSON file from ``file://``, so each data file also exists as
``site-data/<name>.js`` holding ``BROWSE.put("<name>", <the same JSON>);``, which a ``<script>`` tag
may load from disk. The pages and ``browse.js`` are vendored in this package (``static/``); no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ._core import write_json_atomic, write_text_atomic

SHARD = 64
"""Latent records per data file (``data/latents/NNNN.json`` holds latents ``NNNN*64 ..``)."""
STATIC = Path(__file__).parent / "static"
PAGES = ("index.html", "latent.html", "vectors.html", "browse.js", "browse.css")


def shard_name(i: int) -> str:
    return f"{i // SHARD:04d}"


def _put(out: Path, name: str, obj) -> None:
    """``data/<name>.json`` and ``site-data/<name>.js`` with the same content."""
    write_json_atomic(out / "data" / f"{name}.json", obj)
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    write_text_atomic(out / "site-data" / f"{name}.js", f"BROWSE.put({json.dumps(name)}, {text});\n")


def write_site(out: Path, meta: dict, rows: list[dict], records: list[dict], docs: dict, vectors: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = set()
    for start in range(0, len(records), SHARD):
        name = f"latents/{shard_name(start)}"
        names.add(name)
        _put(out, name, {"first": start, "latents": records[start:start + SHARD]})
    for folder, ext in (("data", ".json"), ("site-data", ".js")):  # shards of a wider SAE browsed before
        for old in (out / folder / "latents").glob(f"*{ext}"):
            if f"latents/{old.stem}" not in names:
                old.unlink()
    _put(out, "docs", docs)
    _put(out, "vectors", vectors)
    _put(out, "index", {"meta": {**meta, "shard": SHARD}, "rows": rows})
    for page in PAGES:
        shutil.copyfile(STATIC / page, out / (page + ".tmp"))
        (out / (page + ".tmp")).replace(out / page)
