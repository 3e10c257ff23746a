"""Transferability of each SAE latent across a stitch (paper Eq. 10).

For latent ``i`` and a held-out token ``t`` followed by token ``y``::

    a_i(t) = f_i(h_A(t)) * logit_A(y | row i)      b_i(t) = f'_i(h_B(t')) * logit_B(y | row i')

where ``f`` / ``f'`` are the source / transferred SAE's codes, ``t'`` is B's position aligned with
``t`` and ``logit(y | row)`` is the decoder row pushed through the model's unembedding path (final
norm linearised at the token, see :mod:`stitchplug_analysis.common`). Transferability of latent ``i``
is the Pearson correlation of ``a_i`` and ``b_i`` over the usable tokens.

**Usable tokens.** With one tokenizer every non-special position with a successor is usable. With
two, a position is usable when it is aligned (A's and B's tokens end at the same character) and the
*next* tokens of both sides end at the same character too, i.e. the two next tokens cover the same
string; ``usable_share`` is their share of A's scoreable positions.

**Dead latents** (never firing on a usable token of A) are excluded and counted. A live latent whose
product is constant on B (the transferred latent never fires on usable tokens) has no correlation:
it is counted in ``n_silent_target`` and scored 0 (it carries nothing of the source latent).
The random baseline correlates the source latent ``i`` with latent ``i`` of a random SAE of the same
shape on B, by the same rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .common import Capture, PairedCaptures, decoder_rows, live_codes, pearson_columns


def usable_positions(cap_a: Capture, cap_b: Capture, ia: np.ndarray, ib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aligned positions ``(pa, pb)`` whose next tokens exist, are not special and end at the same
    character offset on both sides (so they decode to the same span of text)."""
    ia, ib = np.asarray(ia), np.asarray(ib)
    la, lb = len(cap_a.ids), len(cap_b.ids)
    ok = (ia + 1 < la) & (ib + 1 < lb)
    ia, ib = ia[ok], ib[ok]
    ea, eb = cap_a.ends.numpy(), cap_b.ends.numpy()
    na, nb = ea[ia + 1], eb[ib + 1]
    ok = (na >= 0) & (na == nb) & ~cap_a.special.numpy()[ia]
    return ia[ok], ib[ok]


def _scoreable(cap: Capture) -> int:
    spec = cap.special.numpy()
    return int((~spec[:-1] & ~spec[1:]).sum()) if len(spec) > 1 else 0


@torch.no_grad()
def products(sae: Any, cap: Capture, pos: np.ndarray, W_eff: torch.Tensor, rows: torch.Tensor | None = None) -> np.ndarray:
    """``f_i(h(t)) * logit(next | row i)`` for the positions ``pos`` of one window: ``[len(pos), m]``."""
    rows = decoder_rows(sae) if rows is None else rows
    pos_t = torch.as_tensor(pos, dtype=torch.long)
    f = live_codes(sae, cap)[pos_t]  # [n, m]
    nxt = cap.ids[pos_t + 1]
    logit_w = (rows @ W_eff[:, nxt]).T / cap.scale[pos_t][:, None]  # [n, m]
    return (f * logit_w).numpy()


def _summary(r: np.ndarray) -> dict:
    r = r[np.isfinite(r)]
    if r.size == 0:
        return {"n": 0}
    q = np.quantile(r, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(r.size), "mean": float(r.mean()), "median": float(q[2]), "q10": float(q[0]),
            "q25": float(q[1]), "q75": float(q[3]), "q90": float(q[4]),
            "share_above_0.5": float((r > 0.5).mean()), "share_below_0": float((r < 0).mean())}


def _scores(pa: np.ndarray, pb: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, int]:
    r = pearson_columns(pa.astype(np.float64), pb.astype(np.float64))
    silent = live & ~np.isfinite(r)
    r = np.where(silent, 0.0, r)
    r[~live] = np.nan
    return r, int(silent.sum())


@torch.no_grad()
def transferability(source_sae: Any, target_sae: Any, pc: PairedCaptures, W_a: torch.Tensor, W_b: torch.Tensor,
                    random_sae: Any | None = None, min_fires: int = 1) -> dict:
    """Eq. 10 per latent of ``source_sae`` (on A) vs ``target_sae`` (its transfer on B), and the same
    against ``random_sae`` (on B) when given. Returns JSON-ready metrics (per-latent lists use
    ``None`` for dead latents)."""
    rows_a, rows_b = decoder_rows(source_sae), decoder_rows(target_sae)
    rows_r = decoder_rows(random_sae) if random_sae is not None else None
    A, B, R, fires = [], [], [], None
    n_usable = n_scoreable = n_aligned = 0
    for cap_a, cap_b, ia, ib in zip(pc.a, pc.b, pc.idx_a, pc.idx_b):
        pa, pb = usable_positions(cap_a, cap_b, ia, ib)
        n_scoreable += _scoreable(cap_a)
        n_aligned += int(len(ia))
        if len(pa) == 0:
            continue
        n_usable += len(pa)
        A.append(products(source_sae, cap_a, pa, W_a, rows_a))
        B.append(products(target_sae, cap_b, pb, W_b, rows_b))
        if random_sae is not None:
            R.append(products(random_sae, cap_b, pb, W_b, rows_r))
        f = (live_codes(source_sae, cap_a)[torch.as_tensor(pa)] != 0).sum(0).numpy()
        fires = f if fires is None else fires + f
    m = int(rows_a.shape[0])
    if n_usable < 3:
        return {"n_usable": n_usable, "n_scoreable": n_scoreable, "error": "fewer than 3 usable tokens"}
    A_, B_ = np.concatenate(A), np.concatenate(B)
    live = fires >= max(int(min_fires), 1)
    r, silent = _scores(A_, B_, live)
    out = {"n_latents": m, "n_dead": int((~live).sum()), "n_live": int(live.sum()), "n_silent_target": silent,
           "n_usable": n_usable, "n_aligned": n_aligned, "n_scoreable": n_scoreable,
           "usable_share": n_usable / max(n_scoreable, 1), "transferred": _summary(r[live]),
           "per_latent": [None if not np.isfinite(v) else float(v) for v in r]}
    if random_sae is not None:
        rr, silent_r = _scores(A_, np.concatenate(R), live)
        out["random"] = _summary(rr[live])
        out["n_silent_random"] = silent_r
        out["per_latent_random"] = [None if not np.isfinite(v) else float(v) for v in rr]
    return out
