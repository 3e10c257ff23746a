"""Attention-deactivation features: latents whose decoder direction makes later heads attend to the
first token (BOS, the usual "no-op" sink) (paper §5).

Path patching of the direct path: for a latent ``i`` of an SAE reading ``blocks.{l}.hook_resid_pre``
and every later layer ``L >= l``, the latent's contribution ``f_i(t) d_i`` is removed from the
*query input* (or, separately, the *key input*) of layer ``L``'s attention only, everything else
clean; the change in each head's attention to position 0 is then

    delta = mean_t [pattern_clean(t -> 0) - pattern_patched(t -> 0)]

over query positions ``t >= 1`` where the latent fires (query path) or where it fired at some key
``1 <= s <= t`` (key path). Patching layer ``L``'s inputs cannot change anything before ``L``, so one
attention call per (layer, path) on the cached clean residual gives every head's exact effect; all
candidate latents go in one batch. ``delta > 0``: the latent pushes the head towards BOS.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .common import _tl_model, decoder_rows, live_codes


@torch.no_grad()
def _pattern(model: Any, L: int, q_resid: torch.Tensor, k_resid: torch.Tensor) -> torch.Tensor:
    """Layer ``L``'s attention pattern ``[batch, head, q, k]`` for the given residual streams."""
    blk = model.blocks[L]
    saved = {}

    def save(p, hook):
        saved["p"] = p.detach()

    q_in, k_in = blk.ln1(q_resid), blk.ln1(k_resid)
    with model.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", save)]):
        blk.attn(query_input=q_in, key_input=k_in, value_input=k_in)
    return saved["p"].float()


@torch.no_grad()
def bos_attention_effects(adapter: Any, sae: Any, layer: int, caps: Sequence[Any], latents: Sequence[int],
                          paths: Sequence[str] = ("q", "k")) -> dict:
    """``delta[path]``: array ``[len(latents), n_later_layers, n_heads]`` of mean drops in attention to
    position 0 when the latent's direction is removed from that path (see the module docstring)."""
    model = _tl_model(adapter)
    rows = decoder_rows(sae)
    later = list(range(layer, model.cfg.n_layers))
    H, n_lat = model.cfg.n_heads, len(latents)
    sums = {p: np.zeros((n_lat, len(later), H)) for p in paths}
    counts = {p: np.zeros((n_lat, 1, 1)) for p in paths}
    lat = torch.as_tensor(list(latents), dtype=torch.long)
    for cap in caps:
        f = live_codes(sae, cap)[:, lat]  # [T, n]
        f[0] = 0  # position 0 is the sink itself
        if not bool((f != 0).any()):
            continue
        names = {adapter.hook_name(L) for L in later}
        _, cache = model.run_with_cache(cap.resid[None].to(adapter.device), names_filter=lambda n: n in names,
                                        start_at_layer=layer, stop_at_layer=later[-1] + 1)
        contrib = (f.T[:, :, None] * rows[lat][:, None, :]).to(adapter.device)  # [n, T, d]
        fires = (f != 0).T.cpu().numpy()  # [n, T]
        q_mask = fires.copy()
        k_mask = np.cumsum(fires, axis=1) > 0
        masks = {"q": q_mask, "k": k_mask}
        for p in paths:
            counts[p][:, 0, 0] += masks[p].sum(1)
        for j, L in enumerate(later):
            x = cache[adapter.hook_name(L)].float()  # [1, T, d]
            clean = _pattern(model, L, x, x)[0, :, :, 0].cpu().numpy()  # [H, T]
            xp = x - contrib.to(x.dtype)  # [n, T, d]
            xb = x.expand(n_lat, -1, -1)
            for p in paths:
                patched = _pattern(model, L, xp, xb) if p == "q" else _pattern(model, L, xb, xp)
                drop = clean[None] - patched[:, :, :, 0].cpu().numpy()  # [n, H, T]
                sums[p][:, j, :] += (drop * masks[p][:, None, :]).sum(-1)
    return {"layers": later, "latents": [int(i) for i in latents],
            "delta": {p: sums[p] / np.maximum(counts[p], 1) for p in paths},
            "n_positions": {p: counts[p][:, 0, 0].astype(int).tolist() for p in paths}}


def rank_features(effects: dict) -> list[dict]:
    """One row per latent: its strongest (path, layer, head) and ``score`` = that delta; sorted."""
    rows = []
    layers = effects["layers"]
    for n, i in enumerate(effects["latents"]):
        best = None
        for p, arr in effects["delta"].items():
            j, h = np.unravel_index(int(np.argmax(arr[n])), arr[n].shape)
            cand = (float(arr[n, j, h]), p, layers[j], int(h))
            if best is None or cand[0] > best[0]:
                best = cand
        rows.append({"latent": int(i), "score": best[0], "path": best[1], "layer": best[2], "head": best[3],
                     "n_positions": int(effects["n_positions"].get("q", [0] * len(effects["latents"]))[n])})
    return sorted(rows, key=lambda r: -r["score"])
