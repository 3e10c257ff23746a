"""Probes and steering vectors of the run: top tokens on both models and example generations per arm.

A vector ``v`` on A is read through A's unembedding and, carried by the stitch's linear part
(``v @ P_up``), through B's; a vector on B likewise with ``P_down``. Probes: the dense probe of each
task (A's, and the transferred one that reads B) and the sparse probes' latents (linked to their pages).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import torch

from .records import r4


def _top(v: torch.Tensor, W: torch.Tensor, tok: Any, n: int = 8) -> dict:
    logits = v.float() @ W
    pv, pi = logits.topk(n)
    nv, ni = (-logits).topk(n)
    dec = lambda i: tok.decode([int(i)])  # noqa: E731
    return {"pos": [[dec(i), r4(x)] for i, x in zip(pi.tolist(), pv.tolist())],
            "neg": [[dec(i), r4(-x)] for i, x in zip(ni.tolist(), nv.tolist())]}


def _both(v: torch.Tensor, side: str, ctx: dict) -> dict:
    """Top tokens of ``v`` (living on ``side``) on its own model and, mapped by the stitch, on the other."""
    other = "b" if side == "a" else "a"
    P = ctx["P_up"] if side == "a" else ctx["P_down"]
    return {side: _top(v, ctx["W"][side], ctx["tok"][side]), other: _top(v.float() @ P, ctx["W"][other], ctx["tok"][other])}


def vectors(inp: Any, A: Any, B: Any, log: Callable[[str], None] = print, n_generations: int = 4) -> dict:
    from ._core import folded_unembed

    rf = inp.rf
    have_probe = rf.artifact("probe", "source").exists()
    have_steer = rf.path("artifacts", "steering").exists()
    if not (have_probe or have_steer):
        return {"probes": [], "steering": [], "generations": {}}
    stitch = rf.load_stitch()
    ctx = {"W": {"a": folded_unembed(A), "b": folded_unembed(B)}, "tok": {"a": A.tokenizer, "b": B.tokenizer},
           "P_up": stitch.P_up.detach().float().cpu(), "P_down": stitch.P_down.detach().float().cpu()}
    out = {"probes": _probes(rf, ctx) if have_probe else [], "steering": [], "generations": {}}
    if have_steer:
        out["steering"], out["generations"] = _steering(rf, ctx, inp.model_names, n_generations)
    log(f"vectors: {len(out['probes'])} probe tasks, {len(out['steering'])} steering vectors")
    return out


def _probes(rf, ctx) -> list[dict]:
    sides = {}
    for role, side in (("source", "a"), ("transferred", "b")):
        path = rf.artifact("probe", role) / "probes.json"
        if path.exists():
            sides[side] = json.loads(path.read_text())
    rows = []
    for task, v in (sides.get("a") or {}).get("tasks", {}).items():
        row = {"task": task, "dense": {}, "sparse": {}}
        for side, probes in sides.items():
            dense = probes["tasks"].get(task, {}).get("dense")
            if dense:
                row["dense"][side] = _both(torch.tensor(dense["coef"]), side, ctx)
        for k, p in v.get("sparse", {}).items():
            row["sparse"][k] = [[int(i), r4(c)] for i, c in zip(p.get("indices") or [], p["coef"])]
        rows.append(row)
    return rows


def _steering(rf, ctx, names: dict, n: int) -> tuple[list[dict], dict]:
    from safetensors.torch import load_file

    base = rf.path("artifacts", "steering")
    rows = []
    for folder in sorted(p for p in base.iterdir() if (p / "vectors.safetensors").exists()):
        meta_file = folder / "steering.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        tensors = load_file(str(folder / "vectors.safetensors"))
        for name, v in sorted(tensors.items()):
            if name.startswith("zref:"):
                continue
            side = _side_of(meta.get("model"), v.shape[-1], names, ctx)
            if side is None:
                continue
            rows.append({"folder": folder.name, "name": name[2:] if name.startswith("v:") else name, "side": side,
                         "model": meta.get("model") or names[side], "layer": meta.get("layer"),
                         "tokens": _both(v, side, ctx)})
    gens: dict[str, list] = {}
    for path in [base / "generations.jsonl", *sorted((base / "generations").glob("*.jsonl"))]:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            arm = r.pop("arm", path.stem)
            if len(gens.setdefault(arm, [])) < n:
                gens[arm].append({k: r.get(k) for k in ("prompt", "text", "lang", "loss") if k in r})
    return rows, gens


def _side_of(model: str | None, width: int, names: dict, ctx: dict) -> str | None:
    for side in ("a", "b"):
        if model and model == names[side]:
            return side
    fits = [s for s in ("a", "b") if ctx["W"][s].shape[0] == width]
    return fits[0] if len(fits) == 1 else None
