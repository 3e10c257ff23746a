"""The plain sparse-probe reference of issue 25 (a few dozen lines of numpy / scikit-learn), used by
tests and bench/probe.py. Deliberately independent of stitchplug_probe: one text at a time, no
batching, no pooling helpers, no folded scaler; it is what the project's sparse arms are measured
against.

Recipe (SAEBench's sparse probing): each text is tokenised by A and cut to ``context_size`` tokens;
B reads the tokens that end within the same characters. The SAE's codes are mean-pooled over the
non-special tokens; k latents are selected on the training split by the class-mean difference
(absolute by default, SAEBench's ``get_top_k_mean_diff_mask``; ``signed=True`` for the signed rule);
a ``StandardScaler`` + L2 ``LogisticRegression(C=1)`` is fitted on those k columns and scored on the
test split (accuracy at threshold 0.5).
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def token_ids(adapter_a, adapter_b, text, context_size):
    """A's ids (at most ``context_size``) and B's ids for the same characters (a plain loop)."""
    ea, eb = adapter_a.encode(text), adapter_b.encode(text)
    ids_a = ea.ids[:context_size]
    last = max([int(e) for e in ea.ends[:context_size].tolist()] + [-1])
    n_b = 0
    for end, special in zip(eb.ends.tolist(), eb.special.tolist()):
        if not special and end > last:
            break
        n_b += 1
    return ids_a, eb.ids[:min(max(n_b, 1), context_size)]


@torch.no_grad()
def pooled_codes(adapter, layer, sae, ids_list, down=None):
    """``[n_texts, d_sae]``: the SAE's codes, mean over each text's non-special tokens (``sae=None``:
    the residual itself). ``down=(P, b)``: the SAE reads ``x @ P + b`` (the source SAE on
    ``T_down(h_B)``, which is Eq. 6's transferred SAE by definition)."""
    rows = []
    for ids in ids_list:
        resid = adapter.capture(ids[None], [layer])[layer][0].float().cpu()
        keep = [int(t) not in adapter.special_ids for t in ids.tolist()]
        x = resid[torch.tensor(keep)]
        if down is not None:
            x = (x.double() @ down[0].double() + down[1].double()).float()
        f = x if sae is None else sae.encode(x.to(sae.dtype)).float()
        rows.append(f.double().mean(0).numpy())
    return np.stack(rows)


def select(X, y, k, signed=False):
    diff = X[y == 1].mean(0) - X[y == 0].mean(0)
    return np.argsort(-(diff if signed else np.abs(diff)), kind="stable")[:k]


def fit(X, y, idx):
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(X[:, idx], y)


def sparse_arms(codes_a, codes_b, y, tr, te, k, signed=False):
    """Accuracy per sparse arm. ``codes_a``: the source SAE on A; ``codes_b``: ``{"transferred": ...,
    "native": ..., "random": ...}`` on B (any subset)."""
    y = np.asarray(y)
    out = {}
    sel = select(codes_a[tr], y[tr], k, signed)
    pa = fit(codes_a[tr], y[tr], sel)
    out["source_A"] = pa.score(codes_a[te][:, sel], y[te])
    if "transferred" in codes_b:
        xb = codes_b["transferred"]
        out["transfer_noretrain"] = pa.score(xb[te][:, sel], y[te])
        out["transfer_retrain"] = fit(xb[tr], y[tr], sel).score(xb[te][:, sel], y[te])
        re = select(xb[tr], y[tr], k, signed)
        out["transfer_reselect"] = fit(xb[tr], y[tr], re).score(xb[te][:, re], y[te])
    for arm, key in (("native_B", "native"), ("random_B", "random"), ("random_unit_B", "random_unit"),
                     ("shuffled_B", "shuffled")):
        if key in codes_b:
            s = select(codes_b[key][tr], y[tr], k, signed)
            out[arm] = fit(codes_b[key][tr], y[tr], s).score(codes_b[key][te][:, s], y[te])
    return {a: float(v) for a, v in out.items()}


def split(y, test_fraction, seed):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(te)


def reference_on_folder(folder, tasks=None, ks=None):
    """Recompute every sparse arm of a finished probe run with this reference: the folder's models,
    stitch, SAEs (source and random of the SAE run, the probe's native SAE, the controls rebuilt from
    their seed; the transferred codes are the source SAE on ``T_down(h_B)``, never the saved transferred
    SAE, so a transferred SAE that is not Eq. 6 of this source shows up), the run's settings (tasks, examples, context, split, selection rule).
    Returns ``{task: {arm: {k: accuracy}}}`` (k as strings, like the run's per-task tables)."""
    import json
    from pathlib import Path

    import yaml
    from sae_lens import SAE
    from stitchplug.api import Stitch, load_model
    from stitchplug_probe.controls import random_unit_sae, shuffled_sae
    from stitchplug_probe.tasks import load_task

    folder = Path(folder)
    res = json.loads((folder / "metrics.json").read_text())["probe"]["diagnostics"]
    s = res["settings"]
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    st = Stitch.load(folder / "stitch" / "stitch.safetensors")
    la, lb = int(st.meta["source_layer"]), int(st.meta["target_layer"])
    a, b = load_model(cfg["models"]["source"]), load_model(cfg["models"]["target"])
    sae = {role: SAE.load_from_disk(folder / p, device="cpu") for role, p in res["saes"].items()
           if role in ("source", "random", "native") and (folder / p / "cfg.json").is_file()}
    if "random_unit" in res["saes"]:
        like = sae["native"] if "native" in sae else SAE.load_from_disk(folder / res["saes"]["transferred"])
        mean = sae["random"].b_dec if "random" in sae else like.b_dec
        sae["random_unit"] = random_unit_sae(like.cfg.d_in, like.cfg.d_sae, like.cfg.k, mean, s["seed"] + 1, like)
    if "shuffled" in res["saes"]:
        sae["shuffled"] = shuffled_sae(sae["native"], s["seed"])
    out = {}
    for spec in tasks or s["tasks"]:
        task = load_task(spec, max_examples=s["max_examples"], seed=s["seed"])
        ids = [token_ids(a, b, t, s["context_size"]) for t in task.texts]
        ca = pooled_codes(a, la, sae["source"], [i[0] for i in ids])
        cb = {r: pooled_codes(b, lb, sae[r], [i[1] for i in ids]) for r in sae if r != "source"}
        cb["transferred"] = pooled_codes(b, lb, sae["source"], [i[1] for i in ids], down=(st.P_down, st.b_down))
        tr, te = split(task.labels, s["test_fraction"], s["seed"])
        out[task.name] = {}
        for k in ks or s["ks"]:
            accs = sparse_arms(ca, cb, task.labels, tr, te, int(k), signed=s.get("selection") == "signed")
            for arm, v in accs.items():
                out[task.name].setdefault(arm, {})[str(k)] = v
    return out
