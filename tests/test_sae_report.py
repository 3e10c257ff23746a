"""report.md's SAE wording follows the run's numbers (no explanation the run contradicts)."""

from stitchplug_sae.report import _fvu_order_sentence


def ev(a, b):
    return {"source_on_A": {"reconstruction": {"fvu": a}}, "transferred_on_B": {"reconstruction": {"fvu": b}}}


def test_fvu_sentence_matches_the_order_of_the_numbers():
    assert "worse than the source" in _fvu_order_sentence(ev(0.09, 0.38)) and "0.380 vs 0.090" in _fvu_order_sentence(ev(0.09, 0.38))
    below = _fvu_order_sentence(ev(0.58, 0.36))
    assert "below" in below and "different variances" in below and "worse" not in below
    assert _fvu_order_sentence({}) == ""
