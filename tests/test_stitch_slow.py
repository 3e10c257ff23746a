"""Stitched next-token loss with the real SmolLM2-135M (slow: loads the model)."""

import pytest

from stitchplug.cache.corpus import open_corpus
from stitchplug.stitch.model import Stitch
from stitchplug.stitch.stitched_ce import stitched_ce, windows_for_texts


@pytest.mark.slow
def test_identity_stitch_smollm2_with_itself_keeps_clean_ce(smollm2):
    texts = [d["text"] for d in open_corpus("wiki-en", start=9000, limit=2)]
    wins = windows_for_texts(texts, smollm2, smollm2, 64)[:3]
    r = stitched_ce(smollm2, smollm2, Stitch.identity(smollm2.d_model), 15, 15, wins)
    assert 2.0 < r["ce_a"] < 5.0  # a real language model on Wikipedia text
    for key in ("a_to_b", "b_to_a", "a_to_b_to_a", "b_to_a_to_b"):
        assert r[key] == pytest.approx(r["ce_a"], abs=1e-5)
    assert r["share_patched"] == {"a": 1.0, "b": 1.0}
