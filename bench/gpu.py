"""Benchmark: throughput of the project's own stages at the paper's shapes on one GPU; prints ONE JSON line.

Measures, through the project's code (no toy re-implementations):

1. ``forward``: ``TLAdapter.capture`` (``run_with_hooks`` with ``stop_at_layer``) of random-init
   models with the exact TransformerLens configs of gemma-2-2b (hooked at layer 20) and gemma-2-9b
   (layer 33), built offline from ``transformer_lens.loading_from_pretrained.convert_hf_model_config``
   (weights are random: the real checkpoints are tens of GB and cannot travel; throughput depends on
   the shapes, not the values). The vocabulary is the tiny test tokenizer's (512 ids) instead of
   256,000: embedding is a lookup and the unembedding is never run under ``stop_at_layer``.
   Tokens/s per model at ``batch x 128`` and the achieved matmul TFLOP/s (2 x block parameters run +
   attention scores, per token).
2. ``cache``: ``stitchplug.cache.writer.build_cache`` end to end (window, align, both forwards,
   HDF5 shards fsynced to the local disk, entry file) on a synthetic corpus registered as a plugin,
   source layer 20, target layer 33, context 128, storage ``bfloat16``, after an untimed warm-up cache
   (as ``bench/scale.py``), with the host work overlapped (``--queue-depth``, default 2: issue 24) at
   batch 8 and 64, and at batch 64 also synchronously (queue depth 0, the time inside ``capture``
   reported separately, as ``gpu-h200.json`` measured it); ``vs_forward`` is end-to-end tokens/s over
   the ``forward`` section's pair rate at the same batch, ``batch_64_shards_identical`` compares the two
   batch-64 caches byte for byte. ``bench/gpu_overlap.sh`` runs the sections issue 24 needs.
3. ``sae``: the one TopK trainer, ``stitchplug.sae.trainer.train_topk_sae``, d_in 2304, k 64, widths
   16,384 and 65,536, on synthetic activations handed over as CPU batches (as the pipeline does: each
   step copies its batch to the GPU), steady-state tokens/s from the per-step callback; plus
   ``TopKTrainer.step`` on GPU-resident batches (the ceiling without the copy); one run again with TF32
   matmuls allowed through the project's ``sae.allow_tf32`` (off by default).
4. ``stitch``: the closed form (``fit_stitch`` with ``solver="lstsq"``: float64 moments + ridge solve)
   at 2304 -> 3584 on the CPU and with ``device="cuda"`` (CPU batches, moments on the GPU, as
   ``--device cuda`` runs it; ``bench/gpu-h200.json`` predates that option and measured the same
   function under ``torch.device("cuda")`` as ``lstsq_gpu_default_device``); the Adam solver
   (``train_adam``, batch 5120, ``device="cuda"``) on GPU-resident batches, again with ``stitch.allow_tf32``.
5. ``dist``: ``torchrun --nproc-per-node 1`` of this file's worker: ``stitchplug.dist.init_from_env``
   (which starts no group at world size 1, by design), then a 1-rank group with the backend of
   ``--device`` (``nccl`` on CUDA) started here, an all-reduce of a device tensor and of a CPU float64
   tensor (what ``Moments.all_reduce`` and the SAE trainer's mean reduce), and ``sae_step`` steps
   through ``DistributedDataParallel`` as ``TopKTrainer`` uses it at world size > 1. Two ranks on one
   GPU are not meaningful (NCCL refuses two ranks on one device; ``init_from_env`` puts rank r on
   ``cuda:r``).

Every section is timed with ``torch.cuda.synchronize`` and bounded by ``--budget-s``; partial results
are rewritten to ``--out/gpu.json`` after each section. ``--tiny`` runs everything with tiny shapes
on the CPU (a test; seconds). The ``cache`` section is in ``gpu_cache.py``, ``sae`` and ``stitch`` in
``gpu_train.py``, the helpers in ``gpu_setup.py``.

Usage: ``PYTHONPATH=.:plugins python bench/gpu.py --out DIR`` (a CUDA machine; about 2.5 minutes on an
H200, 21 GiB of GPU memory); ``PYTHONPATH=.:plugins python bench/gpu.py --tiny`` (CPU, under a minute).
Where stitchplug's dependencies are not installed (the lent H200 had torch, transformers, h5py but not
pydantic, transformer-lens, datasets ...), the run that produced ``bench/gpu-h200.json`` installed
wheels of pydantic 2.14.4, pydantic-core 2.50.5, annotated-types, typing-inspection,
typing-extensions 4.16.0, transformer-lens 3.9.0, fancy-einsum, better-abc, beartype, typeguard,
datasets 5.2.0, dill and multiprocess (``pip install --no-deps --target /tmp/site``) and ran
``PYTHONPATH=/tmp/site:.:plugins PYTHONUNBUFFERED=1 python3 bench/gpu.py --out $OUT --budget-s 300``.
sae-lens is not needed (see :func:`ensure_sae_lens`); plugins are registered without entry points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from gpu_cache import sec_cache  # noqa: E402  (bench/ is sys.path[0])
from gpu_setup import (T0, build_adapter, ensure_datasets, ensure_sae_lens, err, log,  # noqa: E402
                       run_flops_per_token, sync)
from gpu_train import sec_sae, sec_stitch  # noqa: E402


# ------------------------------------------------------------------------------------------ sections
def sec_env(a) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(p):
        try:
            return version(p)
        except PackageNotFoundError:
            return None

    out = {"versions": {p: v(p) for p in ("numpy", "pyarrow", "fsspec", "typing_extensions", "huggingface_hub",
                                           "datasets", "pydantic", "tokenizers", "sentencepiece")},"torch": torch.__version__, "cuda": torch.version.cuda, "transformer_lens": version("transformer-lens"),
           "transformers": version("transformers"), "h5py": version("h5py"),
           "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if a.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                   nccl=str(torch.cuda.nccl.version()))
        n = 8192
        x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            x @ x
        sync("cuda")
        t = time.perf_counter()
        for _ in range(10):
            x @ x
        sync("cuda")
        out["bf16_matmul_8192_tflops"] = round(10 * 2 * n ** 3 / (time.perf_counter() - t) / 1e12, 1)
        del x
    return out


def sec_models(a, state) -> dict:
    t = time.perf_counter()
    state["source"] = build_adapter("2b", a.device, a.dtype, a.tiny)
    state["target"] = build_adapter("9b", a.device, a.dtype, a.tiny)
    sync(a.device)
    out = {"seconds": round(time.perf_counter() - t, 1), "dtype": a.dtype, "vocab": len(state["source"].tokenizer)}
    for side, layer in (("source", a.source_layer), ("target", a.target_layer)):
        ad = state[side]
        out[side] = {"name": ad.name, "d_model": ad.d_model, "n_layers": ad.n_layers, "layer": layer,
                     "params_blocks_run": sum(p.numel() for b in ad.model.blocks[:layer] for p in b.parameters())}
    if a.device == "cuda":
        out["gpu_mem_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return out


def sec_forward(a, state) -> dict:
    out = {}
    ctx = a.context_size
    for bs in a.forward_batches:
        row = {}
        for side, layer in (("source", a.source_layer), ("target", a.target_layer)):
            ad = state[side]
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(4, len(ad.tokenizer), (bs, ctx), generator=g)
            ids[:, 0] = ad.bos_id
            for _ in range(2):
                ad.capture(ids, [layer])
            sync(a.device)
            n, t = 0, time.perf_counter()
            while n < a.forward_iters_min or time.perf_counter() - t < a.forward_seconds:
                ad.capture(ids, [layer])
                n += 1
                if n >= 200:
                    break
            sync(a.device)
            s = time.perf_counter() - t
            tps = n * bs * ctx / s
            row[side] = {"tokens_per_s": round(tps), "iters": n,
                         "tflops": round(tps * run_flops_per_token(ad, layer, ctx) / 1e12, 1)}
        row["pair_tokens_per_s"] = round(1 / (1 / row["source"]["tokens_per_s"] + 1 / row["target"]["tokens_per_s"]))
        out[f"batch_{bs}x{ctx}"] = row
    state["forward"] = out
    return out


def dist_worker(a) -> None:
    """Run under torchrun: the project's init, then a group started here, collectives and DDP steps."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    from stitchplug import dist
    ensure_sae_lens()
    from stitchplug.sae.trainer import TopKSAE, TopKTrainer

    res = {"env_world_size": dist.env_world_size()}
    rank, world = dist.init_from_env(a.device)
    res["init_from_env"] = [rank, world]
    res["group_started_by_project"] = tdist.is_initialized()
    if not tdist.is_initialized():
        backend = dist.backend_for(a.device)  # the backend init_from_env uses at world size > 1
        if a.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group(backend)
    res["backend"] = tdist.get_backend()
    dev = torch.device("cuda", torch.cuda.current_device()) if a.device == "cuda" else torch.device("cpu")
    t = torch.full((4,), float(tdist.get_rank() + 1), device=dev)
    tdist.all_reduce(t)
    res["all_reduce_device_tensor"] = float(t[0])
    try:  # Moments.all_reduce and train_topk_sae's first-batch sums reduce CPU float64 tensors
        c = torch.ones(3, dtype=torch.float64)
        tdist.all_reduce(c)
        res["all_reduce_cpu_float64"] = "ok"
    except Exception as exc:
        res["all_reduce_cpu_float64"] = err(exc)
    d, width = a.sae_d, a.sae_runs[0][0]
    sae = TopKSAE.random(d, width, a.sae_k, generator=torch.Generator().manual_seed(0),
                         apply_b_dec_to_input=True).to(dev)
    tr = TopKTrainer(sae, 2e-4)
    if tr.forward is None:  # TopKTrainer wraps in DDP only at world size > 1: do what it does
        tr.forward = DistributedDataParallel(sae)
    x = torch.randn(1024, d, generator=torch.Generator().manual_seed(2)).to(dev)
    for _ in range(3):
        tr.step(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 20
    for _ in range(n):
        info = tr.step(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res["ddp_sae_steps"] = n
    res["ddp_sae_tokens_per_s"] = round(n * 1024 / (time.perf_counter() - t0))
    res["ddp_sae_ev"] = round(float(info["ev"]), 3)
    tdist.barrier()
    tdist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(a.dist_out).write_text(json.dumps(res))


def sec_dist(a, state) -> dict:
    outf = Path(tempfile.mkdtemp(prefix="stitchplug-gpu-dist-")) / "dist.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           str(Path(__file__).resolve()), "--dist-worker", "--dist-out", str(outf), "--device", a.device]
    if a.tiny:
        cmd.append("--tiny")
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.dist_timeout)
    out = {"command": "torchrun --standalone --nproc-per-node 1 bench/gpu.py --dist-worker --device " + a.device,
           "rc": r.returncode, "seconds": round(time.perf_counter() - t, 1)}
    if outf.exists():
        out.update(json.loads(outf.read_text()))
    else:
        out["stderr_tail"] = r.stderr.strip().splitlines()[-5:]
    return out


# ------------------------------------------------------------------------------------------ main
def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a test)")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="models' compute dtype (default bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--sections", default="env,models,forward,cache,sae,stitch,dist")
    ap.add_argument("--cache-tokens", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip later parts of sections past this")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu.json (partial results)")
    ap.add_argument("--work-dir", default=None, help="where caches are written (default: the temp folder)")
    ap.add_argument("--queue-depth", type=int, default=2, help="cache.queue_depth of the overlapped cache rows")
    ap.add_argument("--host-workers", type=int, default=2, help="cache.host_workers of the overlapped cache rows")
    ap.add_argument("--dist-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dist-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.device = a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    a.context_size = 128
    a.cache_dtype = "bfloat16"
    a.dist_timeout = 150
    if a.tiny:
        a.source_layer, a.target_layer = 3, 5
        a.forward_batches, a.forward_seconds, a.forward_iters_min = [2], 0.2, 2
        a.cache_tokens = a.cache_tokens or 1500
        a.cache_batches, a.sync_batches = [8], [8]
        a.sae_d, a.sae_k, a.sae_pool_rows = 64, 8, 4096
        a.sae_runs = [(256, 256, 20, False)]
        a.stitch_dims, a.stitch_pool_rows, a.stitch_cpu_rows = (64, 96), 4096, 4096
    else:
        a.source_layer, a.target_layer = 20, 33
        a.forward_batches, a.forward_seconds, a.forward_iters_min = [8, 64], 3.0, 5
        a.cache_tokens = a.cache_tokens or 100_000
        a.cache_batches, a.sync_batches = [8, 64], [64]
        a.sae_d, a.sae_k, a.sae_pool_rows = 2304, 64, 65536
        a.sae_runs = [(16384, 1024, 300, False), (16384, 4096, 120, False), (65536, 4096, 40, False),
                      (16384, 4096, 120, True)]
        a.stitch_dims, a.stitch_pool_rows, a.stitch_cpu_rows = (2304, 3584), 65536, 32768
    a.stitch_gpu_rounds, a.stitch_adam_steps = (4, 100) if not a.tiny else (1, 10)
    return a


def main() -> None:
    a = parse()
    if a.dist_worker:
        return dist_worker(a)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {"bench": "gpu", "tiny": a.tiny, "device": a.device, "datasets_import": ensure_datasets(),
                     "sections": {}}
    out_path = Path(a.out) / "gpu.json" if a.out else None
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    state: dict = {}
    fns = {"env": lambda: sec_env(a), "models": lambda: sec_models(a, state), "forward": lambda: sec_forward(a, state),
           "cache": lambda: sec_cache(a, state), "sae": lambda: sec_sae(a, state),
           "stitch": lambda: sec_stitch(a, state), "dist": lambda: sec_dist(a, state)}
    needs_models = {"forward", "cache"}
    for name in a.sections.split(","):
        if name in needs_models and "source" not in state:
            results["sections"][name] = {"skipped": "no models"}
            continue
        if name == "sae" and "source" in state:  # free the 11 GiB of model weights before the SAE runs
            state.clear()
            if a.device == "cuda":
                torch.cuda.empty_cache()
        log(f"section {name} ...")
        t = time.perf_counter()
        try:
            results["sections"][name] = fns[name]()
        except Exception as exc:
            traceback.print_exc()
            results["sections"][name] = {"error": err(exc)}
        results["sections"][name + "_seconds"] = round(time.perf_counter() - t, 1)
        log(f"section {name} done: {json.dumps(results['sections'][name])[:600]}")
        results["elapsed_s"] = round(time.perf_counter() - T0, 1)
        if out_path is not None:
            out_path.write_text(json.dumps(results, indent=1))
    if a.device == "cuda":
        results["gpu_max_mem_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    results["elapsed_s"] = round(time.perf_counter() - T0, 1)
    if out_path is not None:
        out_path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
