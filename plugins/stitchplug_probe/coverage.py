"""Where features carry a task (issue 25): per task, how well the stitch and the SAEs cover the task's
own tokens, how much of the dense probe's accuracy the sparse probes recover, and which tasks the
transfer fails on, with the measured reason.

- **Stitch coverage**: FVU of ``T_down(h_B)`` against ``h_A`` on the task's aligned non-special tokens
  (A and B tokens that end at the same character), over all dimensions and without A's massive ones.
- **SAE coverage**: FVU of each SAE's reconstruction on the task's non-special tokens of its side
  (source on A; transferred and native on B).
- **Recovery**: ``(acc_sparse - 0.5) / (acc_dense - 0.5)`` per arm and k, with the dense probe of the
  arm's side (``dense_A`` for ``source_A``, ``dense_B`` for the arms on B); undefined (None) where the
  dense probe is within 0.02 of chance.
- **Failures**: tasks where the retrained transfer at k = 5 is more than ``FAIL_MARGIN`` below the
  native SAE (the source SAE on A when there is no native arm); each is named with its coverage
  numbers against the median task, and a reason: ``stitch`` when T_down's FVU (massive dims excluded)
  is above the median task's, ``sae`` when the source SAE's FVU is, both, or ``selection`` when neither
  coverage is worse than the median task (the selected latents do not carry the task on B).
"""

from __future__ import annotations

import numpy as np
import torch

from stitchplug.api import ReconAccumulator, massive_dims

FAIL_MARGIN = 0.05
REC_K = "5"


def _fvu(x: torch.Tensor, x_hat: torch.Tensor, exclude=()) -> dict:
    acc = ReconAccumulator(x.shape[1], list(exclude))
    acc.update(x, x_hat)
    r = acc.result()
    return {k: r[k] for k in ("fvu", "fvu_excl_massive", "n_tokens")}


def _stack(resid, encs, side: int) -> torch.Tensor:
    return torch.cat([r[~e[side].special] for r, e in zip(resid, encs)]).float()


@torch.no_grad()
def task_coverage(tokens: dict, P_down: np.ndarray, b_down: np.ndarray, saes_a: dict, saes_b: dict) -> dict:
    """``{"stitch_down": fvu dict, "sae": {name: fvu dict}}`` from :func:`features.extract`'s tokens."""
    ra, rb, encs = tokens["A"], tokens["B"], tokens["enc"]
    xa_al, xb_al = [], []
    for r_a, r_b, (ea, eb) in zip(ra, rb, encs):
        ends_a = np.where(ea.special.numpy(), -1, ea.ends.numpy())
        ends_b = np.where(eb.special.numpy(), -10, eb.ends.numpy())
        _, ia, ib = np.intersect1d(ends_a, ends_b, return_indices=True)
        xa_al.append(r_a[torch.as_tensor(ia)])
        xb_al.append(r_b[torch.as_tensor(ib)])
    xa = _stack(ra, encs, 0)
    massive = massive_dims(xa)
    out: dict = {"massive_dims_A": massive}
    if sum(len(x) for x in xa_al) > 1:
        XA, XB = torch.cat(xa_al).double(), torch.cat(xb_al).double()
        T = XB @ torch.as_tensor(P_down, dtype=torch.float64) + torch.as_tensor(b_down, dtype=torch.float64)
        out["stitch_down"] = _fvu(XA, T, massive)
    xb = _stack(rb, encs, 1)
    out["sae"] = {}
    for side_x, group in ((xa, saes_a), (xb, saes_b)):
        for name, sae in group.items():
            x = side_x.to(sae.dtype)
            out["sae"][name] = _fvu(x, sae.decode(sae.encode(x)), massive if group is saes_a else ())
    return out


def recovery(res: dict) -> dict:
    """``{arm: {k: share or None}}`` for one task's results (``strip_correct`` form, keys as strings)."""
    dense = {side: res["dense"].get(arm, {}).get("accuracy") for side, arm in (("A", "dense_A"), ("B", "dense_B"))}
    out: dict = {}
    for arm, by_k in res["sparse"].items():
        d = dense["A" if arm == "source_A" else "B"]
        for k, rec in by_k.items():
            ok = d is not None and d - 0.5 > 0.02
            out.setdefault(arm, {})[str(k)] = (rec["accuracy"] - 0.5) / (d - 0.5) if ok else None
    return out


def recovery_summary(per_task: dict) -> dict:
    """Mean and median recovery over tasks at k = 5 per arm, and how many tasks define it."""
    out = {}
    arms = {a for r in per_task.values() for a in r.get("recovery", {})}
    for arm in sorted(arms):
        vals = [r["recovery"][arm].get(REC_K) for r in per_task.values() if arm in r.get("recovery", {})]
        vals = [v for v in vals if v is not None]
        if vals:
            out[arm] = {"k": int(REC_K), "mean": float(np.mean(vals)), "median": float(np.median(vals)),
                        "n_tasks": len(vals)}
    return out


def failures(per_task: dict) -> list[dict]:
    """Tasks where the retrained transfer fails at k = 5, with the measured reason (module docstring)."""
    def stitch(r):
        return ((r.get("coverage") or {}).get("stitch_down") or {}).get("fvu_excl_massive")

    def sae(r):
        return (((r.get("coverage") or {}).get("sae") or {}).get("source") or {}).get("fvu_excl_massive")

    med_st = np.median([v for v in map(stitch, per_task.values()) if v is not None] or [np.nan])
    med_sae = np.median([v for v in map(sae, per_task.values()) if v is not None] or [np.nan])
    out = []
    for name, r in per_task.items():
        sp = r["sparse"]
        got = sp.get("transfer_retrain", {}).get(REC_K)
        ref_arm = "native_B" if REC_K in sp.get("native_B", {}) else "source_A"
        ref = sp.get(ref_arm, {}).get(REC_K)
        if got is None or ref is None or got["accuracy"] >= ref["accuracy"] - FAIL_MARGIN:
            continue
        st, sa = stitch(r), sae(r)
        why = [w for w, v, m in (("stitch", st, med_st), ("sae", sa, med_sae)) if v is not None and v > m]
        out.append({"task": name, "transfer_retrain": got["accuracy"], ref_arm: ref["accuracy"],
                    "stitch_fvu": st, "median_stitch_fvu": float(med_st), "source_sae_fvu": sa,
                    "median_source_sae_fvu": float(med_sae), "reason": "+".join(why) or "selection"})
    return out
