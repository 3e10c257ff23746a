"""The project's SAE trainer against the plain reference recipe on real SmolLM2-135M activations.

Same cached batches, same budget, width, k and lr: the project's held-out FVU (raw and excluding the
massive dims) must be within 1.1x the reference's, with no more dead latents (issue 9's bar, at a
reduced scale: 16k cached tokens, 120 steps x 1024, width 1152). bench/sae.py measures the same on the
quick preset's cache.
"""

import os
from pathlib import Path

import pytest
import torch

from sae_reference import reference_codes, reference_forward, train_reference
from stitchplug.cache.reader import open_cache
from stitchplug.cache.writer import build_cache
from stitchplug.metrics import ReconAccumulator, massive_dims
from stitchplug.sae.trainer import train_topk_sae

pytestmark = pytest.mark.slow
LAYER, WIDTH, K, STEPS, LR = 15, 1152, 32, 120, 4e-4


def heldout(forward, codes, x, massive):
    acc = ReconAccumulator(x.shape[1], massive)
    with torch.no_grad():
        acc.update(x, forward(x))
        dead = 1 - float((codes(x) != 0).any(0).float().mean())
    r = acc.result()
    return r["fvu"], r["fvu_excl_massive"], dead


@pytest.fixture
def pair_cache(request, tmp_path):
    """A default-pair cache with SmolLM2 layer 15: $STITCHPLUG_SAE_TEST_CACHE (e.g. a `make demo`
    run's cache.h5, read only) or a fresh 16k-token one."""
    given = os.environ.get("STITCHPLUG_SAE_TEST_CACHE")
    if given:
        return Path(given)
    smollm2, gemma3 = request.getfixturevalue("smollm2"), request.getfixturevalue("gemma3")
    return build_cache(tmp_path / "c.h5", smollm2, gemma3, corpus="wiki-en", doc_start=0, tokens=16_000,
                       context_size=128, source_layers=[LAYER], target_layers=[12], progress=False,
                       log=lambda m: None)


def test_project_trainer_within_bar_of_reference(pair_cache):
    path = pair_cache
    with open_cache(path) as cache:
        it = cache.batches(keys=[("source", LAYER)], batch_size=1024, split="train", seed=0, epochs=1000,
                           drop_last=True)
        train = [next(it)[0].float() for _ in range(STEPS)]
        x_eval = torch.from_numpy(cache.array("source", LAYER, split="eval")[:]).float()
    massive = massive_dims(x_eval)
    assert massive, "SmolLM2 layer 15 has massive-activation dims; the excluded FVU must exclude something"
    sae, _ = train_topk_sae(train, x_eval.shape[1], width=WIDTH, k=K, lr=LR, train_tokens=STEPS * 1024,
                            batch_size=1024, progress=False)
    ref = train_reference(train, x_eval.shape[1], WIDTH, K, lr=LR)
    p_fvu, p_excl, p_dead = heldout(sae, sae.encode, x_eval, massive)
    r_fvu, r_excl, r_dead = heldout(lambda x: reference_forward(x, *ref, K), lambda x: reference_codes(x, *ref, K),
                                    x_eval, massive)
    msg = f"project {p_fvu:.3f}/{p_excl:.3f}/{p_dead:.2f} reference {r_fvu:.3f}/{r_excl:.3f}/{r_dead:.2f}"
    assert p_fvu <= 1.1 * r_fvu and p_excl <= 1.1 * r_excl, msg
    assert p_dead <= r_dead + 1 / WIDTH, msg
    assert r_excl < 0.7, msg  # the reference itself learned something (the bar is not vacuous)
