"""The browser's data: one record per latent, one index row per latent, the documents' tokens.

Numbers are rounded to 4 significant digits (the pages show 3). Context activations are lists over
the context's tokens (``start`` is the first token's position in the document's token list).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stream import HIST_EDGES, TopK


def r4(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.4g}")


def contexts(st: TopK, j: int, lengths: list[int]) -> list[dict]:
    """Top contexts of latent ``j`` on one model, strongest first (documents where it never fired are left out)."""
    out = []
    for s in range(st.k):
        v = float(st.val[j, s])
        if not np.isfinite(v) or v <= 0:
            continue
        d, lo = int(st.doc[j, s]), int(st.start[j, s])
        n = max(0, min(st.window, lengths[d] - lo))
        out.append({"doc": d, "start": lo, "max": r4(v), "acts": [r4(a) or 0.0 for a in st.ctx[j, s, :n].tolist()]})
    return out


def on_a_contexts(b: TopK, a: TopK, j: int, first, length) -> list[dict | None]:
    """B's activations on the text of each of A's top contexts of latent ``j`` (aligned with
    :func:`contexts` of A; None where B's tokens do not cover that text)."""
    out = []
    for s in range(a.k):
        v = float(a.val[j, s])
        if not np.isfinite(v) or v <= 0:
            continue
        n = int(length[j, s])
        if n == 0:
            out.append(None)
            continue
        acts = [r4(x) or 0.0 for x in b.cross[j, s, :n].tolist()]
        out.append({"doc": int(a.doc[j, s]), "start": int(first[j, s]), "max": r4(max(acts)), "acts": acts})
    return out


def histogram(st: TopK, j: int) -> dict:
    nb = len(HIST_EDGES) - 1
    h = st.hist[j * nb:(j + 1) * nb].numpy()
    nz = np.nonzero(h)[0]
    if not len(nz):
        return {"lo": 0, "counts": []}
    return {"lo": int(nz[0]), "counts": h[nz[0]:nz[-1] + 1].tolist()}


def side_record(st: TopK, j: int, lengths: list[int], logits: dict, vocab: dict[int, str]) -> dict:
    cnt = int(st.count[j])
    return {"freq_docs": r4(cnt / max(st.n_tokens, 1)), "mean_docs": r4(float(st.total[j]) / cnt if cnt else None),
            "fires_docs": cnt, "max": r4(max(float(st.val[j, 0]), 0.0)),
            "hist": histogram(st, j), "top": contexts(st, j, lengths),
            "pos": [[vocab[int(i)], r4(v)] for i, v in zip(logits["pos_ids"][j].tolist(), logits["pos_vals"][j].tolist())],
            "neg": [[vocab[int(i)], r4(v)] for i, v in zip(logits["neg_ids"][j].tolist(), logits["neg_vals"][j].tolist())]}


def top_tokens(ctxs: list[dict], tokens: list[list[str]], n: int = 4) -> list[str]:
    """Distinct tokens at the maximum of the strongest contexts (what the latent fires on)."""
    out: list[str] = []
    for c in ctxs:
        if not c or not c["acts"]:
            continue
        t = tokens[c["doc"]][c["start"] + int(np.argmax(c["acts"]))]
        if t not in out:
            out.append(t)
        if len(out) >= n:
            break
    return out


def build(a: TopK, b: TopK, first, length, docs_tokens: dict, lengths: dict, logits: dict, vocab: dict,
          neigh: dict, eval_freq: dict, analysis: dict, latents: range | None = None) -> tuple[list[dict], list[dict]]:
    """``(records, index rows)`` of ``latents`` (default: all)."""
    records, rows = [], []
    for j in (latents if latents is not None else range(a.m)):
        ra = side_record(a, j, lengths["a"], logits["a"], vocab["a"])
        rb = side_record(b, j, lengths["b"], logits["b"], vocab["b"])
        rb["on_a"] = on_a_contexts(b, a, j, first, length)
        ev = {s: (eval_freq.get(s) or {}) for s in ("a", "b")}
        freq = {s: (ev[s].get("frequency") or [None] * a.m)[j] for s in ("a", "b")}
        mean = {s: (ev[s].get("mean_when_active") or [None] * a.m)[j] for s in ("a", "b")}
        rec = {"i": j, "a": ra, "b": rb,
               **{k: (r4(v[j]) if k.startswith("r") else v[j]) for k, v in analysis.items()},
               "neighbours_a": [[int(i), r4(c)] for i, c in zip(neigh["a"][0][j].tolist(), neigh["a"][1][j].tolist())],
               "neighbours_b": [[int(i), r4(c)] for i, c in zip(neigh["b"][0][j].tolist(), neigh["b"][1][j].tolist())]}
        live = bool(ra["fires_docs"] or (freq["a"] or 0) > 0)
        row = {"i": j, "live": live, "freq_a": freq["a"], "freq_b": freq["b"],
               "mean_a": r4(mean["a"]), "mean_b": r4(mean["b"]),
               "freq_docs_a": ra["freq_docs"], "freq_docs_b": rb["freq_docs"], "max_a": ra["max"], "max_b": rb["max"],
               "r": analysis["r"][j], "r_random": analysis["r_random"][j], "class": rec["class"], "entropy": rec["entropy"],
               "attention": rec["attention"],
               "tokens_a": top_tokens(ra["top"], docs_tokens["a"]), "tokens_b": top_tokens(rb["top"], docs_tokens["b"]),
               "logits_a": [p[0] for p in ra["pos"][:3]], "logits_b": [p[0] for p in rb["pos"][:3]]}
        rec["live"] = live
        records.append(rec)
        rows.append(row)
    return records, rows
