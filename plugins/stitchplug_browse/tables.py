"""Per-latent tables that need no held-out text: logit effects, decoder neighbours, token strings,
and the numbers ``stitchplug analyze`` left in ``metrics.json``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


@torch.no_grad()
def decoder(sae: Any) -> torch.Tensor:
    """Decoder rows ``[m, d]`` (float32, CPU). Row scales do not matter here: token rankings and
    cosines are scale-free."""
    return sae.W_dec.detach().float().cpu()


@torch.no_grad()
def logit_effects(rows: torch.Tensor, W_eff: torch.Tensor, n: int = 10, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Top ``n`` promoted and suppressed tokens of each row through ``W_eff [d, V]``, ``chunk`` rows at a
    time (never ``[m, V]`` at once): ``pos_ids, pos_vals, neg_ids, neg_vals`` each ``[m, n]``."""
    n = min(n, W_eff.shape[1])
    out = {k: [] for k in ("pos_ids", "pos_vals", "neg_ids", "neg_vals")}
    for i in range(0, rows.shape[0], chunk):
        logits = rows[i:i + chunk] @ W_eff
        pv, pi = logits.topk(n, dim=1)
        nv, ni = (-logits).topk(n, dim=1)
        out["pos_ids"].append(pi), out["pos_vals"].append(pv), out["neg_ids"].append(ni), out["neg_vals"].append(-nv)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def neighbours(rows: torch.Tensor, n: int = 6, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` other rows with the highest cosine to each row: ``(indices [m, n], cosines [m, n])``."""
    u = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = min(n, u.shape[0] - 1)
    idx, val = [], []
    for i in range(0, u.shape[0], chunk):
        c = u[i:i + chunk] @ u.T
        c[torch.arange(c.shape[0]), torch.arange(i, i + c.shape[0])] = -2.0
        v, j = c.topk(n, dim=1)
        idx.append(j), val.append(v)
    return torch.cat(idx), torch.cat(val)


def token_strings(text: str, ends: torch.Tensor, ids: torch.Tensor, tokenizer: Any) -> list[str]:
    """The text of each token in the model's own tokenization: token ``t`` covers the characters after
    the previous token's end up to its own (spaces included); special tokens show their name."""
    out, prev = [], 0
    for e, i in zip(ends.tolist(), ids.tolist()):
        if e < 0:
            out.append(_token_name(tokenizer, i))
            continue
        out.append(text[prev:e])
        prev = e
    return out


def _token_name(tokenizer: Any, i: int) -> str:
    try:
        return str(tokenizer.convert_ids_to_tokens(int(i)))
    except Exception:
        return f"<{int(i)}>"


def vocab_strings(tokenizer: Any, ids: np.ndarray) -> dict[int, str]:
    """Readable strings of vocabulary ids (``decode`` of the single token, spaces kept)."""
    out = {}
    for i in np.unique(ids):
        try:
            out[int(i)] = tokenizer.decode([int(i)])
        except Exception:
            out[int(i)] = _token_name(tokenizer, int(i))
    return out


def analysis_columns(metrics: dict, m: int) -> dict[str, list]:
    """Per-latent columns from ``metrics.json``'s ``feature_analysis`` (None where not computed):
    ``r`` and ``r_random`` (Eq. 10), ``class`` (semantic / structural / rare), ``entropy`` (listed as an
    entropy feature: "A", "B" or "AB" = top by null-space share on that side), ``attention``
    (attention-deactivation candidate: "kept" / "lost" on B, "A" = ranked on A only); "" where the
    part ran and did not list the latent."""
    fa = metrics.get("feature_analysis") or {}
    cols: dict[str, list] = {k: [None] * m for k in ("r", "r_random", "class", "entropy", "attention")}
    t = fa.get("transferability") or {}
    for key, col in (("per_latent", "r"), ("per_latent_random", "r_random")):
        vals = t.get(key)
        if vals and len(vals) == m:
            cols[col] = list(vals)
    classes = (fa.get("semantic") or {}).get("classes")
    if classes and len(classes) == m:
        cols["class"] = list(classes)
    for part in ("entropy", "attention"):  # computed, latent not listed: "" (None: the part did not run)
        if fa.get(part):
            cols[part] = [""] * m
    for row in (fa.get("entropy") or {}).get("features", []):
        if 0 <= int(row["latent"]) < m:
            cols["entropy"][int(row["latent"])] = row.get("top_on") or "listed"
    att = fa.get("attention") or {}
    for row in att.get("source_ranking", []):
        if 0 <= int(row["latent"]) < m:
            cols["attention"][int(row["latent"])] = "A"
    for row in att.get("top", []):
        if 0 <= int(row["latent"]) < m:
            cols["attention"][int(row["latent"])] = "kept" if row.get("keeps_role") else "lost"
    return cols


def evaluation_frequency(metrics: dict, m: int) -> dict[str, list | None]:
    """``sae.{source_on_A,transferred_on_B}.latent_frequency`` of ``stitchplug run``, if present."""
    ev = metrics.get("sae") or {}
    out: dict[str, list | None] = {}
    for side, arm in (("a", "source_on_A"), ("b", "transferred_on_B")):
        f = ((ev.get(arm) or {}).get("latent_frequency") or {}).get("latent_frequency")
        out[side] = list(f) if f and len(f) == m else None
    return out
