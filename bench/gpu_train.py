"""The ``sae`` and ``stitch`` sections of ``bench/gpu.py``: the two trainers' throughput through the
project's code (the TopK SAE trainer, host-fed and device-resident, with and without TF32; the stitch's
closed form on the CPU and the GPU, and its Adam solver)."""

from __future__ import annotations

import time
import types

import torch

from gpu_setup import T0, ensure_sae_lens, err, sync  # bench/ is sys.path[0]


def sec_sae(a, state) -> dict:
    have_saelens = ensure_sae_lens()
    import stitchplug.sae.trainer as trainer_mod

    from stitchplug import precision
    from stitchplug.sae.trainer import TopKSAE, TopKTrainer, train_topk_sae

    if not have_saelens:  # skip the final sae-lens conversion (after the timed steps)
        trainer_mod.to_saelens = lambda sae, scale=1.0, model_name=None, hook_name=None: types.SimpleNamespace(
            cfg=types.SimpleNamespace(metadata=types.SimpleNamespace()))
    d = a.sae_d
    out = {"d_in": d, "k": a.sae_k, "sae_lens_installed": have_saelens,
           "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    pool_rows = a.sae_pool_rows
    pool = (torch.randn(pool_rows, d, generator=g) @ mix) + 3.0 * torch.randn(d, generator=g)
    for width, bs, steps, tf32 in a.sae_runs:
        key = f"width_{width}_batch_{bs}" + ("_tf32" if tf32 else "")
        if time.perf_counter() - T0 > a.budget_s * 0.75:
            out[key] = {"skipped": "time budget"}
            continue
        batches = [pool[i:i + bs] for i in range(0, pool_rows - bs + 1, bs)]
        stamps = []

        def on_step(step, info):
            stamps.append(time.perf_counter())

        t = time.perf_counter()
        _, summ = train_topk_sae(batches, d, width=width, k=a.sae_k, batch_size=bs, train_tokens=steps * bs,
                                 device=a.device, progress=False, on_step=on_step, lr=2e-4,
                                 allow_tf32=tf32)  # sae.allow_tf32: TF32 inside the training loop only
        sync(a.device)
        wall = time.perf_counter() - t
        warm = min(5, len(stamps) - 2)
        steady = (len(stamps) - 1 - warm) * bs / (stamps[-1] - stamps[warm])
        row = {"steps": summ["steps"], "wall_s": round(wall, 2), "tokens_per_s_project_summary": summ["tokens_per_s"],
               "tokens_per_s_steady": round(steady), "step_flops": summ["step_flops"],
               "tflops_steady": round(steady / bs * summ["step_flops"] / 1e12, 1),
               "ev_final": round(summ["explained_variance_final"], 3)}
        # the ceiling: the same step on batches already on the device (no host copy, no rebatch)
        sae = TopKSAE.random(d, width, a.sae_k, generator=torch.Generator().manual_seed(0),
                             b_dec=pool[:bs].mean(0), apply_b_dec_to_input=True).to(a.device)
        tr = TopKTrainer(sae, 2e-4)
        xs = [b.to(a.device) for b in batches[:8]]
        with precision.tf32(tf32, a.device):
            for i in range(3):
                tr.step(xs[i % len(xs)])
            sync(a.device)
            n = max(10, steps // 2)
            t = time.perf_counter()
            for i in range(n):
                tr.step(xs[i % len(xs)])
            sync(a.device)
        row["tokens_per_s_device_resident"] = round(n * bs / (time.perf_counter() - t))
        row["tf32_after"] = bool(torch.backends.cuda.matmul.allow_tf32)  # restored: False
        out[key] = row
        del sae, tr, xs
        if a.device == "cuda":
            torch.cuda.empty_cache()
    return out


def sec_stitch(a, state) -> dict:
    from stitchplug.config import StitchConfig
    from stitchplug.stitch.fit import fit_stitch, train_adam
    from stitchplug.stitch.model import Stitch

    dA, dB = a.stitch_dims
    out = {"d_source": dA, "d_target": dB}
    g = torch.Generator().manual_seed(1)
    n = a.stitch_pool_rows
    hA = torch.randn(n, dA, generator=g)
    hB = hA[:, :min(dA, dB)].repeat(1, dB // min(dA, dB) + 1)[:, :dB] + 0.1 * torch.randn(n, dB, generator=g)

    def source_of(xa, xb, bs, rounds=1):
        def src():
            for _ in range(rounds):
                for i in range(0, xa.shape[0] - bs + 1, bs):
                    yield xa[i:i + bs], xb[i:i + bs]
        src.n_tokens = rounds * (xa.shape[0] // bs) * bs
        return src

    # closed form on the CPU: the project's path today (Moments allocates on the CPU)
    cfg = StitchConfig(solver="lstsq")
    ncpu = min(n, a.stitch_cpu_rows)
    t = time.perf_counter()
    res = fit_stitch(source_of(hA[:ncpu], hB[:ncpu], 4096), dA, dB, cfg)
    s = time.perf_counter() - t
    out["lstsq_cpu"] = {"tokens": res.info["train_tokens"], "seconds": round(s, 2),
                        "tokens_per_s": round(res.info["train_tokens"] / s), "threads": torch.get_num_threads()}
    if a.device == "cuda":
        gA, gB = hA.to("cuda"), hB.to("cuda")
        try:  # the project's path under --device cuda: CPU batches, float64 moments on the GPU
            fit_stitch(source_of(hA[:8192], hB[:8192], 8192), dA, dB, cfg, device="cuda")  # warm-up
            sync("cuda")
            t = time.perf_counter()
            res = fit_stitch(source_of(hA, hB, 8192, rounds=a.stitch_gpu_rounds), dA, dB, cfg, device="cuda")
            sync("cuda")
            s = time.perf_counter() - t
            out["lstsq_device_cuda"] = {"tokens": res.info["train_tokens"], "seconds": round(s, 2),
                                        "tokens_per_s": round(res.info["train_tokens"] / s),
                                        "train_loss_total": round(res.info["train_loss"]["total"], 4)}
        except Exception as exc:
            out["lstsq_device_cuda"] = {"error": err(exc)}
        bs = 5120
        steps = a.stitch_adam_steps
        try:
            st = Stitch(dA, dB, seed=0).to("cuda")
            acfg = StitchConfig(solver="adam", batch_size=bs, epochs=1)
            src = source_of(gA, gB, bs, rounds=100)
            train_adam(st, src, acfg, steps_per_epoch=steps, max_steps=5, device="cuda")
            sync("cuda")
            t = time.perf_counter()
            run = train_adam(st, src, acfg, steps_per_epoch=steps, max_steps=steps, device="cuda")
            sync("cuda")
            s = time.perf_counter() - t
            out["adam_gpu"] = {"batch_size": bs, "steps": run["steps"], "seconds": round(s, 2),
                               "tokens_per_s": round(run["tokens_seen"] / s)}
            tcfg = StitchConfig(solver="adam", batch_size=bs, epochs=1, allow_tf32=True)  # stitch.allow_tf32
            sync("cuda")
            t = time.perf_counter()
            run = train_adam(st, src, tcfg, steps_per_epoch=steps, max_steps=steps, device="cuda")
            sync("cuda")
            s = time.perf_counter() - t
            out["adam_gpu_tf32"] = {"batch_size": bs, "steps": run["steps"], "seconds": round(s, 2),
                                    "tokens_per_s": round(run["tokens_seen"] / s),
                                    "tf32_after": bool(torch.backends.cuda.matmul.allow_tf32)}
        except Exception as exc:
            out["adam_gpu"] = {"error": err(exc)}
    else:
        st = Stitch(dA, dB, seed=0)
        acfg = StitchConfig(solver="adam", batch_size=256, epochs=1)
        t = time.perf_counter()
        run = train_adam(st, source_of(hA, hB, 256, rounds=10), acfg, steps_per_epoch=10, max_steps=10)
        out["adam_cpu"] = {"batch_size": 256, "steps": run["steps"],
                           "tokens_per_s": round(run["tokens_seen"] / (time.perf_counter() - t))}
    return out
