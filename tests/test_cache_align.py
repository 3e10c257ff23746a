"""Token alignment by character end offsets, identity alignment, special-token masking, windows."""

import numpy as np
import pytest

from stitchplug.cache.align import align_by_end_offsets, align_identity, get_aligner
from stitchplug.cache.windows import paired_windows
from stitchplug.errors import CacheError
from stitchplug.adapter import load_model


@pytest.fixture(scope="module")
def tiny():
    # tiny-llama-a/-b share a byte-level BPE tokenizer; tiny-gemma3 has a SentencePiece-style one
    return {"a": load_model("tiny-llama-a"), "a2": load_model("tiny-llama-b"), "b": load_model("tiny-gemma3")}


def _brute(ends_a, ends_b):
    last_a = {e: i for i, e in enumerate(ends_a) if e >= 0}
    last_b = {e: i for i, e in enumerate(ends_b) if e >= 0}
    common = sorted(set(last_a) & set(last_b))
    return [last_a[e] for e in common], [last_b[e] for e in common]


def test_whitespace_runs_keep_only_common_ends():
    # text "a  b": A = [BOS] "a" " " " b" ; B = [BOS] "a" "  b"
    ia, ib = align_by_end_offsets([-1, 1, 2, 4], [-1, 1, 4])
    assert ia.tolist() == [1, 3] and ib.tolist() == [1, 2]


def test_multibyte_char_split_into_byte_tokens_keeps_last():
    # text "x😀y": A splits the emoji into two byte tokens that both end at offset 2
    ia, ib = align_by_end_offsets([-1, 1, 2, 2, 3], [-1, -1, 1, 2, 3])
    assert ia.tolist() == [1, 3, 4] and ib.tolist() == [2, 3, 4]


def test_specials_are_never_paired():
    ia, ib = align_by_end_offsets([-1, -1, 3], [-1, 3, -1])
    assert ia.tolist() == [2] and ib.tolist() == [1]
    assert len(align_by_end_offsets([-1], [-1])[0]) == 0


def test_real_tokenizers_on_multibyte_text_match_brute_force(tiny):
    a, b = tiny["a"], tiny["b"]
    text = "Zürich  –  東京 😀 naïve\tcafé   déjà-vu!  Ελληνικά"
    ea, eb = a.encode(text).ends.numpy(), b.encode(text).ends.numpy()
    ia, ib = align_by_end_offsets(ea, eb)
    assert (ia.tolist(), ib.tolist()) == _brute(ea.tolist(), eb.tolist())
    assert np.array_equal(ea[ia], eb[ib]) and (ea[ia] >= 0).all()
    assert ea[ia][-1] == len(text)  # the text's last character is always a common end


def test_identity_for_same_tokenizer(tiny):
    a, a2, b = tiny["a"], tiny["a2"], tiny["b"]
    assert get_aligner("auto", a, a2)[0] == "identity"
    assert get_aligner("auto", a, b)[0] == "end-offsets"
    text = "The quick brown fox. Ünïcödé 😀 too."
    ws = paired_windows(text, a, a2, context_size=64)
    assert len(ws) == 1
    ea, eb, ia, ib = ws[0]
    real = np.flatnonzero(~ea.special.numpy())
    assert ia.tolist() == real.tolist() and ib.tolist() == real.tolist()
    with pytest.raises(CacheError):
        align_identity(a.encode(text).ends, b.encode(text).ends)


def test_aligners_come_from_the_plugin_registry_and_unknown_is_an_error():
    from stitchplug.plugins import registry

    assert {"end-offsets", "identity"} <= set(registry().names("aligners"))
    assert get_aligner("end-offsets")[1]([-1, 2], [2]) [0].tolist() == [1]
    with pytest.raises(CacheError, match="unknown aligner"):
        get_aligner("nope")


def test_windows_cover_the_text_and_respect_context(tiny):
    from stitchplug.cache.corpus import open_corpus

    a, b = tiny["a"], tiny["b"]
    text = next(iter(open_corpus("wiki-en", start=7, limit=1)))["text"]
    ws = paired_windows(text, a, b, context_size=40)
    assert len(ws) > 3
    assert ws[0].start == 0 and ws[-1].end == len(text)
    for prev, cur in zip(ws, ws[1:]):
        assert prev.end == cur.start
    n_real = 0
    for w in ws:
        assert len(w.source) <= 40
        assert w.source.special[0] and w.target.special[0]  # each window has its own BOS
        ea, eb = w.source.ends.numpy(), w.target.ends.numpy()
        assert np.array_equal(ea[w.idx_source], eb[w.idx_target])
        assert ((ea[w.idx_source] > w.start) & (ea[w.idx_source] <= w.end)).all()  # document offsets
        n_real += int((ea >= 0).sum())
    # re-tokenising spans cut at whitespace reproduces the whole-document tokenisation
    assert n_real == int((a.encode(text).ends >= 0).sum())
    assert paired_windows("", a, b, 40) == []
