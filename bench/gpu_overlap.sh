#!/usr/bin/env bash
# Issue 24 on a lent GPU machine, one self-contained run (about 3-4 minutes on an H200; gpu.py is cut at
# 330 s and rewrites $OUT/gpu.json after every section, so a late failure still leaves the earlier rows):
#   forwards of the random-init gemma-2-2b.20 / gemma-2-9b.33 shapes at batch 8 and 64, the cache end to end
#   with the writer overlapped (queue depth 2) at batch 8 and 64 plus the synchronous batch-64 row (queue
#   depth 0, as bench/gpu-h200.json measured it), the ratio to the forwards ("vs_forward") and a byte
#   comparison of the two batch-64 caches ("batch_64_shards_identical"), then the SAE trainer and the
#   stitch's Adam with and without TF32 through the project's flags (sae.allow_tf32, stitch.allow_tf32);
#   then bench/cache_host.py (the cache's host work alone, old single thread vs cache.host_workers) into
#   $OUT/cache_host.json.
# Needs: torch with CUDA, transformers, h5py on the machine (the H200 image had them); the other wheels
# travel in .gpu-wheels/ (an ignored folder: pass it in the run's carry list) and are installed with
# --no-deps into a private folder, as for bench/gpu-h200.json. No network, no model downloads.
# To make .gpu-wheels/ (7 MB; Python 3.12 wheels, on a machine with the package index):
#   pip download --no-deps --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_17_x86_64 -d .gpu-wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
#     typing-inspection typing-extensions==4.16.0 transformer-lens==3.9.0 fancy-einsum better-abc beartype \
#     typeguard datasets==5.2.0 dill multiprocess jaxtyping wadler-lindig einops pluggy click tqdm
set -u
: "${OUT:?set OUT to the folder the JSON goes to}"
SITE=${SITE:-/tmp/stitchplug-site}
WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT" "$SITE"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    python3 -m pip install --no-deps --no-index --quiet --target "$SITE" "$WHEELS"/*.whl > "$OUT/pip.log" 2>&1 \
        || echo "pip install of .gpu-wheels failed (see pip.log); trying the machine's packages" >&2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
df -h /tmp > "$OUT/df.txt" 2>&1
PYTHONPATH="$SITE:.:plugins" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout 330 \
    python3 bench/gpu.py --out "$OUT" --sections env,models,forward,cache,sae,stitch --budget-s 300 ${GPU_EXTRA:-} \
    > "$OUT/gpu.stdout" 2> "$OUT/gpu.log"
rc=$?
tail -n 25 "$OUT/gpu.log"
# the cache's host work alone (no models, no GPU): the single-thread code before cache.host_workers vs the pool
PYTHONPATH="$SITE:.:plugins" timeout 120 python3 bench/cache_host.py --out "$OUT/cache_host.json" \
    > "$OUT/cache_host.stdout" 2> "$OUT/cache_host.log" || echo "bench/cache_host.py failed (see cache_host.log)" >&2
cat "$OUT/cache_host.json" 2>/dev/null
python3 - "$OUT/gpu.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))["sections"]
except Exception as exc:  # noqa: BLE001
    sys.exit(f"no gpu.json: {exc}")
c, f = d.get("cache", {}), d.get("forward", {})
print(json.dumps({"cache_vs_forward_batch64_overlap": c.get("batch_64", {}).get("vs_forward"),
                  "cache_vs_forward_batch64_sync": c.get("batch_64_sync", {}).get("vs_forward"),
                  "cache_vs_forward_batch8_overlap": c.get("batch_8", {}).get("vs_forward"),
                  "tokens_per_s": {k: v.get("tokens_per_s") for k, v in c.items() if isinstance(v, dict)},
                  "shards_identical_batch64": c.get("batch_64_shards_identical"),
                  "pair_forward_tokens_per_s": {k: v.get("pair_tokens_per_s") for k, v in f.items()}}))
PY
exit $rc
