"""The cache on the real default pair (SmolLM2-135M -> Gemma-3-270M) on Wikipedia text."""

import numpy as np
import pytest

from stitchplug.cache.reader import open_cache
from stitchplug.cache.writer import build_cache


@pytest.mark.slow
def test_default_pair_alignment_rate_above_90_percent(smollm2, gemma3, tmp_path):
    path = build_cache(tmp_path / "c.h5", smollm2, gemma3, corpus="wiki-en", doc_start=200, tokens=1500,
                       context_size=128, source_layers=[15], target_layers=[12], dtype="float16",
                       progress=False, log=lambda m: None)
    with open_cache(path) as c:
        rate_source, rate_target = c.alignment_rate
        assert rate_source > 0.90 and rate_target > 0.90, c.alignment_rate
        assert c.attrs["alignment_method"] == "end-offsets" and c.n_tokens == 1500
        x = c.array("target", 12)
        assert x.dtype == np.float16 and np.isfinite(x).all()
        assert np.array_equal(c.array("source", "ends"), c.array("target", "ends"))
    # Gemma's massive values (beyond float16) sit on <bos>, which the cache masks out
    enc = gemma3.encode("The capital of France is Paris.")
    bos = gemma3.capture(enc.ids[None], [12])[12][0, 0]
    assert bool(enc.special[0]) and float(bos.abs().max()) > 65504
