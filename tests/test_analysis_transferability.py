"""Eq. 10 transferability on tiny models: identity stitch of a model with itself gives r = 1."""

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from stitchplug.stitch.model import Stitch
from stitchplug.stitch.stitched_ce import windows_for_texts
from stitchplug_analysis.common import paired_captures, unembed_path
from stitchplug_analysis.transferability import transferability, usable_positions
from stitchplug_models.tiny import TRAIN_TEXT, load
from stitchplug.sae.transfer import random_sae_like, transfer_sae

TEXTS = [t for t in TRAIN_TEXT.split("\n") if len(t) > 30]


def _topk(d_in=32, m=48, seed=0):
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=m, k=4, apply_b_dec_to_input=True, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return sae


def test_identity_stitch_gives_transferability_one(one_thread):
    a = load("tiny-llama-a")
    sae = _topk()
    moved = transfer_sae(sae, Stitch.identity(32), check_model=False)
    rnd = random_sae_like(moved, seed=1)
    pc = paired_captures(a, a, windows_for_texts(TEXTS, a, a, 64), 1, 1)
    W = unembed_path(a)
    res = transferability(sae, moved, pc, W, W, rnd)
    r = np.array([v for v in res["per_latent"] if v is not None])
    assert res["n_live"] == len(r) > 10 and res["n_live"] + res["n_dead"] == 48
    assert res["usable_share"] == pytest.approx(1.0)
    assert res["n_silent_target"] == 0
    assert r.min() > 0.999
    # the random SAE of the same shape is nowhere near: it reads other directions
    assert res["random"]["median"] < 0.5


def test_dead_latents_are_excluded_and_counted(one_thread):
    a = load("tiny-llama-a")
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.b_enc.zero_()
        sae.b_enc[[2, 5]] = -1e4  # never fire
    moved = transfer_sae(sae, Stitch.identity(32), check_model=False)
    pc = paired_captures(a, a, windows_for_texts(TEXTS[:4], a, a, 64), 1, 1)
    W = unembed_path(a)
    res = transferability(sae, moved, pc, W, W)
    assert res["n_dead"] == 2 and res["per_latent"][2] is None and res["per_latent"][5] is None
    assert res["n_live"] == 14


def test_cross_tokenizer_usable_positions_cover_the_same_text(one_thread):
    a, b = load("tiny-llama-a"), load("tiny-gemma3")
    text = TEXTS[0] + " " + TEXTS[5]
    (ea, eb, ia, ib), = windows_for_texts([text], a, b, 128)
    pc = paired_captures(a, b, [(ea, eb, ia, ib)], 1, 1)
    pa, pb = usable_positions(pc.a[0], pc.b[0], ia, ib)
    assert 0 < len(pa) < len(ia)  # some aligned positions have next tokens that differ
    for p, q in zip(pa, pb):
        assert ea.ends[p] == eb.ends[q] and ea.ends[p + 1] == eb.ends[q + 1]
        assert text[int(ea.ends[p]):int(ea.ends[p + 1])] == text[int(eb.ends[q]):int(eb.ends[q + 1])]
