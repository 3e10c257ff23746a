"""The offline augmenter keeps function words and punctuation and swaps content words."""

import re

import pytest

from stitchplug.errors import StitchplugError
from stitchplug_analysis.augment import _TOKEN, function_words, get_augmenter, is_content, word_class
from stitchplug_analysis.semantic import per_class_transferability, sentences

DONORS = [
    {"text": "Volcanoes erupted violently, covering villages with ash in 1883. Geologists measured craters.",
     "topic": "geology"},
    {"text": "Composers wrote symphonies; orchestras performed them loudly across Europe during 1791.",
     "topic": "music"},
    {"text": "Farmers harvested wheat and barley while rivers flooded the valley.", "topic": "farming"},
]
SENTENCE = "The farmers quickly harvested barley, and the river flooded in 1927."


def test_keeps_function_words_and_changes_content_words():
    aug = get_augmenter("content-swap", DONORS)
    stop = function_words()
    orig = _TOKEN.findall(SENTENCE)
    versions = aug.rewrite(SENTENCE, 5, seed=0, topic="farming")
    assert len(versions) == 5 and len(set(versions)) > 1
    farming = set(_TOKEN.findall(DONORS[2]["text"]))
    for v in versions:
        toks = _TOKEN.findall(v)
        assert len(toks) == len(orig)
        for o, t in zip(orig, toks):
            if is_content(o, stop):
                assert t.lower() != o.lower(), (o, v)
                assert word_class(t) == word_class(o), (o, t)
                assert t not in farming or t.isdigit()  # drawn from other topics
            else:
                assert t == o  # function words, punctuation and spaces kept
    assert versions == aug.rewrite(SENTENCE, 5, seed=0, topic="farming")  # deterministic


def test_unknown_augmenter_is_one_line_error():
    with pytest.raises(StitchplugError, match="unknown augmenter 'llm'.*content-swap"):
        get_augmenter("llm", DONORS)


def test_sentences_and_per_class_summary():
    s = sentences(DONORS, 10, min_words=4)
    assert [x["topic"] for x in s] == ["geology", "music", "farming"]  # "Geologists measured craters." is too short
    pc = per_class_transferability(["structural", "semantic", "semantic", "rare"], [0.9, 0.95, -0.2, 0.1])
    assert pc["structural"]["n"] == 1 and pc["semantic"]["n"] == 2
    assert pc["semantic"]["share_tails"] == 1.0


def test_classify_structural_semantic_and_rare(one_thread):
    """A latent firing everywhere is structural; one reading the token " river" is semantic."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    from stitchplug_analysis.semantic import classify
    from stitchplug_models.tiny import load

    m = load("tiny-llama-a")
    tok = m.encode(" river").ids[-1]
    e = m.model.W_E[tok].detach()
    proj = m.model.W_E.detach() @ e / e.pow(2).sum()
    others = torch.cat([proj[:tok], proj[tok + 1:]]).max()
    assert others < 0.95  # the direction singles out the token
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=3, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_dec.zero_()
        sae.b_enc.copy_(torch.tensor([10.0, -(1 + float(others)) / 2, -1.0]))
        sae.W_enc[:, 1] = e / e.pow(2).sum()
    sents = [{"text": "The river flows past the old mill and into the valley.", "topic": "farming"},
             {"text": "In winter the river rises and the boats drift to the sea.", "topic": "farming"}]
    res = classify(m, sae, 0, sents, get_augmenter("content-swap", DONORS), n_versions=3)
    assert res["classes"] == ["structural", "semantic", "rare"]
    assert res["counts"] == {"structural": 1, "semantic": 1, "rare": 1}
