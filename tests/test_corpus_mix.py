"""The ``mix:`` corpus: syntax errors, character shares, determinism, held-out documents of every
component in a tiny cache's eval split, and the cache's and run's fingerprints following the mix."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from stitchplug.cache.corpus import corpus_files, corpus_fingerprint, open_corpus, parse_mix
from stitchplug.errors import ConfigError

MIX = "mix:wiki-en=0.6,wiki-fr=0.2,wiki-es=0.2"


def stitchplug(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_parse_normalises_weights_and_defaults_to_equal():
    assert parse_mix("mix:wiki-en=3,wiki-fr=1") == [("wiki-en", 0.75), ("wiki-fr", 0.25)]
    assert parse_mix("mix:wiki-en, wiki-fr") == [("wiki-en", 0.5), ("wiki-fr", 0.5)]


@pytest.mark.parametrize("spec, says", [
    ("mix:wiki-en=abc,wiki-fr=1", "is not a number"),
    ("mix:wiki-en=0,wiki-fr=1", "positive finite"),
    ("mix:wiki-en=-1,wiki-fr=1", "positive finite"),
    ("mix:wiki-en=nan,wiki-fr=1", "positive finite"),
    ("mix:wiki-en=1", "at least two"),
    ("mix:wiki-en=1,,wiki-fr=1", "empty component"),
    ("mix:wiki-en=1,wiki-en=2", "appears twice"),
    ("mix:wiki-en=1,mix:wiki-fr=1", "cannot contain another mix"),
    ("mix:wiki-en=1,=2", "without a corpus name"),
])
def test_bad_syntax_is_a_config_error(spec, says):
    with pytest.raises(ConfigError, match=says):
        parse_mix(spec)


@pytest.mark.parametrize("spec, says", [
    ("mix:wiki-en=abc,wiki-fr=1", "is not a number"),
    ("mix:wiki-en=1", "at least two"),
])
def test_cli_refuses_bad_syntax_in_one_line_with_exit_2_before_making_the_folder(spec, says, tmp_path):
    out = tmp_path / "run"
    res = stitchplug("run", "--cache-corpus", spec, "--output-dir", str(out), "--no-progress")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("Warning")]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: corpus") and says in lines[0], res.stderr
    assert not out.exists()


def test_cli_names_an_unknown_component_in_one_line(tmp_path):
    res = stitchplug("run", "--cache-corpus", "mix:wiki-en=1,wiki-xx=1", "--output-dir", str(tmp_path / "r"))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("Warning")]
    assert res.returncode != 0 and len(lines) == 1 and "wiki-xx" in lines[0], res.stderr


def _shares(docs):
    chars: dict[str, int] = {}
    for d in docs:
        chars[d["corpus"]] = chars.get(d["corpus"], 0) + len(d["text"])
    total = sum(chars.values())
    return {k: v / total for k, v in chars.items()}


def test_every_prefix_holds_the_character_shares():
    docs = list(itertools.islice(open_corpus(MIX), 3000))
    longest = max(len(d["text"]) for d in docs)
    for n in (200, 1000, 3000):
        got = _shares(docs[:n])
        total = sum(len(d["text"]) for d in docs[:n])
        for comp, w in parse_mix(MIX):
            # the greedy rule keeps each component within one document of its share
            assert abs(got[comp] - w) * total <= longest, (n, comp, got)
    assert all(d["doc_id"].startswith(d["corpus"] + ":") for d in docs)
    assert {d["corpus"] for d in docs} == {"wiki-en", "wiki-fr", "wiki-es"}


def test_the_mix_is_deterministic_and_slices_consistently():
    a = [d["doc_id"] for d in itertools.islice(open_corpus(MIX), 500)]
    b = [d["doc_id"] for d in itertools.islice(open_corpus(MIX), 500)]
    assert a == b and len(set(a)) == 500
    assert [d["doc_id"] for d in open_corpus(MIX, start=100, limit=20)] == a[100:120]
    other = [d["doc_id"] for d in itertools.islice(open_corpus("mix:wiki-en=0.8,wiki-fr=0.1,wiki-es=0.1"), 500)]
    assert other != a


def test_file_components_are_fingerprinted_inputs(tmp_path):
    f = tmp_path / "extra.jsonl"
    f.write_text('{"text": "one document"}\n{"text": "two documents"}\n')
    spec = f"mix:wiki-en=0.9,file:{f}=0.1"
    assert corpus_files(spec) == {f"corpus:file:{f}": str(f)}
    assert corpus_files(MIX) == {} and corpus_fingerprint(MIX) is None
    before = corpus_fingerprint(spec)
    f.write_text('{"text": "one document, edited"}\n{"text": "two documents"}\n')
    assert corpus_fingerprint(spec) != before
