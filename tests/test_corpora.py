"""Corpora: offline Wikipedia (en/fr/es), local files through `datasets`, hub names offline."""

import json
import subprocess
import sys

import pytest

from stitchplug.cache.corpus import open_corpus
from stitchplug.errors import StitchplugError


@pytest.mark.parametrize("name,min_docs", [("wiki-en", 10_000), ("wiki-fr", 9_000), ("wiki-es", 6_000)])
def test_wiki_corpora_have_fields_and_a_stable_order(name, min_docs):
    docs = list(open_corpus(name))
    assert len(docs) >= min_docs
    ids = [d["doc_id"] for d in docs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for d in docs[:50]:
        assert d["text"].strip() and d["title"] and "topic" in d and "description" in d
    again = list(open_corpus(name, start=100, limit=3))
    assert [d["doc_id"] for d in again] == ids[100:103]


def test_wiki_topics_are_usable_labels():
    topics = {d["topic"] for d in open_corpus("wiki-en")}
    assert 5 <= len(topics) <= 100


def test_local_jsonl_txt_parquet(tmp_path):
    rows = [{"text": f"Document number {i}.", "id": f"d{i}", "label": i % 2} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "b.txt").write_text("First paragraph\nstill first.\n\nSecond paragraph.\n")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    kw = {"cache_dir": str(tmp_path / "hf")}
    got = list(open_corpus(f"file:{tmp_path / 'a.jsonl'}", **kw))
    assert [d["doc_id"] for d in got] == [r["id"] for r in rows] and got[3]["label"] == 1
    assert [d["text"] for d in open_corpus(f"file:{tmp_path / 'c.parquet'}", start=1, limit=2, **kw)] == \
        [rows[1]["text"], rows[2]["text"]]
    txt = list(open_corpus(f"file:{tmp_path / 'b.txt'}", **kw))
    assert len(txt) == 2 and "still first" in txt[0]["text"] and txt[1]["doc_id"] == "b.txt:1"


def test_bad_corpora_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StitchplugError, match="hub.*not reachable.*wiki-en") as err:
        open_corpus("hub:openwebtext")
    assert "\n" not in str(err.value)
    with pytest.raises(StitchplugError, match="not found"):
        open_corpus(f"file:{tmp_path / 'missing.jsonl'}")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(StitchplugError, match="must end in"):
        open_corpus(f"file:{tmp_path / 'x.csv'}")
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(StitchplugError, match="no 'text' field"):
        list(open_corpus(f"file:{tmp_path / 'notext.jsonl'}", cache_dir=str(tmp_path / "hf")))
    with pytest.raises(StitchplugError, match="unknown corpus 'wiki-xx'"):
        open_corpus("wiki-xx")


def test_cli_reports_an_offline_hub_corpus_in_one_line(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "stitchplug.cli", "cache", "--cache-corpus", "hub:openwebtext",
                          "--output", str(tmp_path / "c.h5")], capture_output=True, text=True, env=env, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: corpus 'hub:openwebtext'"), res.stderr


@pytest.mark.parametrize("name,content,says", [
    ("empty.jsonl", b"", "is empty"),
    ("empty.txt", b"", "is empty"),
    ("trunc.jsonl", b'{"text": "a"}\n{"text": ', "JSON parse error"),
    ("latin1.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"), "UnicodeDecodeError"),
    ("null.jsonl", b'{"text": "fine"}\n{"text": null}\n', "document 1 has a null 'text'"),
    ("number.jsonl", b'{"text": 42}\n', "document 0 has a 'text' of type int"),
])
def test_bad_corpus_files_name_the_problem(name, content, says, tmp_path):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StitchplugError) as err:
        list(open_corpus(f"file:{tmp_path / name}", cache_dir=str(tmp_path / "hf")))
    assert says in str(err.value) and "\n" not in str(err.value)
    assert "An error occurred while generating" not in str(err.value)
