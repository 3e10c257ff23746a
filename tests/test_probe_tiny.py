"""Probe transfer end to end on tiny random-init models: a planted task carried through a known
stitch, feature extraction details (truncation, padding), determinism from the seed."""

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from stitchplug.api import ModelAdapter, Stitch, load_model
from stitchplug_probe import features
from stitchplug_probe.experiment import ProbeSettings, run_probes
from stitchplug.sae.transfer import random_sae_like, transfer_sae

LA = 1


class MappedAdapter(ModelAdapter):
    """Model B for the test: model A's residual at every layer, mapped by a known affine map."""

    def __init__(self, base, M: torch.Tensor, c: torch.Tensor):
        self.base, self.M, self.c = base, M, c
        self.name, self.d_model, self.n_layers = "mapped", int(M.shape[1]), base.n_layers
        self.tokenizer = base.tokenizer

    @property
    def special_ids(self):
        return self.base.special_ids

    def encode(self, text):
        return self.base.encode(text)

    def capture(self, ids, layers):
        return {l: r @ self.M + self.c for l, r in self.base.capture(ids, layers).items()}

    def logits(self, ids, patches=None):
        raise NotImplementedError

    def unembed(self):
        raise NotImplementedError

    def generate(self, prompt, **kw):
        raise NotImplementedError


def _texts(n, seed=0):
    from stitchplug_models.tiny import TRAIN_TEXT

    words = TRAIN_TEXT.split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(4, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    a = load_model("tiny-llama-a")
    d_a, d_b = a.d_model, 48
    gen = torch.Generator().manual_seed(1)
    M = torch.randn(d_a, d_b, generator=gen)
    c = torch.randn(d_b, generator=gen)
    b = MappedAdapter(a, M, c)
    Mp = torch.linalg.pinv(M.double()).float()
    st = Stitch(d_a, d_b)
    with torch.no_grad():  # the known, exact stitch: T_down(h_B) = h_A
        st.P_up.copy_(M), st.b_up.copy_(c), st.P_down.copy_(Mp), st.b_down.copy_(-c @ Mp)
    sae = TopKSAE(TopKSAEConfig(d_in=d_a, d_sae=64, k=8))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(generator=gen)
    texts = _texts(240)
    # plant the label: the pooled activation of the most variable source latent, above its median
    pooled = features.extract(a, LA, a, LA, texts, encoders_a={"s": features.sae_encoder(sae)},
                              encoders_b={}, context_size=64)["A"]["s"]
    j = int(pooled.var(0).argmax())
    labels = (pooled[:, j] > np.median(pooled[:, j])).astype(int)
    return a, b, st, sae, texts, labels, j


def _csv(tmp_path, texts, labels):
    import pandas as pd

    p = tmp_path / "planted.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(p, index=False)
    return f"file:{p}"


def test_planted_direction_transfers(setup, tmp_path, one_thread):
    a, b, st, sae, texts, labels, j = setup
    saes = {"source": sae, "transferred": transfer_sae(sae, st, "up", check_model=False),
            "random": random_sae_like(transfer_sae(sae, st, "up", check_model=False), seed=3)}
    s = ProbeSettings(tasks=[_csv(tmp_path, texts, labels)], max_examples=1000, ks=(1, 5), context_size=64)
    res = run_probes(a, LA, b, LA, st, saes, s, log=lambda m: None)
    r = next(iter(res["tasks"].values()))
    sp, de = r["sparse"], r["dense"]
    assert sp["source_A"]["1"]["accuracy"] > 0.9
    assert sp["transfer_noretrain"]["1"]["accuracy"] > 0.9  # A's probe, as is, on B through the stitch
    assert abs(sp["transfer_noretrain"]["5"]["accuracy"] - sp["source_A"]["5"]["accuracy"]) <= 1 / r["n_test"]
    # random SAE on B: far below. Not 0.5: in A's 32 dims the best of 64 random latent directions
    # (top-1 by mean difference) has |cos| ~ 0.5 with the planted one; measured 0.72 at seed 0.
    assert sp["random_B"]["1"]["accuracy"] < 0.8
    assert sp["transfer_noretrain"]["1"]["accuracy"] - sp["random_B"]["1"]["accuracy"] > 0.2
    assert abs(de["dense_Tdown_noretrain"]["accuracy"] - de["dense_A"]["accuracy"]) <= 1 / r["n_test"]
    assert res["probes_A"][next(iter(res["tasks"]))]["sparse"]["1"]["indices"] == [j]
    assert res["tasks_above_random"]["1"] == {"above": 1, "of": 1}
    # each model read each example once: A and B on the training rows, both on the test rows
    passes = {p["pass"]: p["examples"] for p in res["timing"]["passes"]}
    assert passes == {"A, training examples": r["n_train"], "B, training examples": r["n_train"],
                      "A and B, test examples": r["n_test"]}


def test_same_seed_same_results_other_seed_differs(setup, tmp_path, one_thread):
    a, b, st, sae, texts, labels, _ = setup
    saes = {"source": sae, "transferred": transfer_sae(sae, st, "up", check_model=False)}
    task = _csv(tmp_path, texts, labels)
    runs = [run_probes(a, LA, b, LA, st, saes, ProbeSettings(tasks=[task], ks=(2,), context_size=64,
                                                              max_examples=160, seed=s), log=lambda m: None)
            for s in (0, 0, 1)]
    assert runs[0]["tasks"] == runs[1]["tasks"] and runs[0]["sparse"] == runs[1]["sparse"]
    assert runs[0]["tasks"] != runs[2]["tasks"]


def test_padding_and_truncation(one_thread):
    a, g = load_model("tiny-llama-a"), load_model("tiny-gemma3")
    texts = _texts(6, seed=5)
    ids = [features.paired_ids(a, g, t, context_size=8) for t in texts]
    for t, (ia, ig) in zip(texts, ids):
        assert len(ia) <= 8 and len(ig) <= 8
        ea, eg = a.encode(t), g.encode(t)
        cut = int(ea.ends[: len(ia)].max())
        assert int(eg.ends[: len(ig)].max()) <= cut  # B reads no character beyond A's window
    one = [features.capture_many(a, 1, [x[0]], batch_size=1)[0] for x in ids]
    many = features.capture_many(a, 1, [x[0] for x in ids], batch_size=4)
    for x, y in zip(one, many):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="unknown pooling"):
        features.pool(one, [x[0] for x in ids], a.special_ids, {"d": features.identity}, pooling="max")
    last = features.pool(one, [x[0] for x in ids], a.special_ids, {"d": features.identity}, pooling="last")["d"]
    np.testing.assert_allclose(last[0], one[0][-1].double().numpy(), rtol=1e-6)


def test_one_pass_for_all_arms_scores_each_arm_as_alone(setup, tmp_path, one_thread):
    """score_arms shares one pass per model among the arms; each arm's records equal those of a pass
    for that arm alone (what Evaluator.evaluate_arms promises against evaluate)."""
    from stitchplug_probe.arms import transfer_entry
    from stitchplug_probe.experiment import fit_on_b, fit_source, score_arms, stitch_down

    a, b, st, sae, texts, labels, _ = setup
    saes = {"source": sae, "transferred": transfer_sae(sae, st, "up", check_model=False),
            "random": random_sae_like(transfer_sae(sae, st, "up", check_model=False), seed=3)}
    s = ProbeSettings(tasks=[_csv(tmp_path, texts[:120], labels[:120])], ks=(1, 5), context_size=64)
    src = fit_source(a, LA, b, saes, s, log=lambda m: None)
    P, c = stitch_down(st)
    arms = {"source_on_A": src, "transferred_on_B": {"tasks": {t: transfer_entry(v, P, c) for t, v in src["tasks"].items()}}}
    arms |= fit_on_b(a, b, LA, src, saes, st, s)
    assert set(arms) == {"source_on_A", "transferred_on_B", "retrained_on_B", "reselected_on_B", "residual_on_B",
                         "random_on_B"}
    together = score_arms(a, LA, b, LA, arms, saes, st, s)
    for label in ("source_on_A", "retrained_on_B", "random_on_B"):
        alone = score_arms(a, LA, b, LA, {label: arms[label]}, saes, st, s)[label]
        for task, rec in alone["tasks"].items():
            assert rec == together[label]["tasks"][task], label
        assert "coverage" not in alone["tasks"][task]  # coverage needs both models: only in a shared pass
    assert "coverage" in next(iter(together["transferred_on_B"]["tasks"].values()))
