"""Set-up for ``bench/gpu.py`` on a lent device machine: logging and timing helpers, the optional
dependencies it can do without (sae-lens) or install from wheels (datasets), a synthetic corpus
registered as a plugin, and random-init adapters with the exact TransformerLens configs of the
paper's models (``--tiny``: the test architectures). The measurements themselves are in ``gpu.py``,
``gpu_cache.py`` and ``gpu_train.py``.
"""

from __future__ import annotations

import random
import sys
import time
import types

import torch

T0 = time.perf_counter()
CORPUS = "gpu-bench-synthetic"


def log(msg: str) -> None:
    print(f"[gpu.py {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]


# ------------------------------------------------------------------------------------------ set-up
def ensure_sae_lens() -> bool:
    """The trainer module imports sae-lens for its final conversion (``to_saelens``) only. Where
    sae-lens is not installed (the GPU machine: it pulls in wandb, plotly, nltk ...) a placeholder
    module is installed and the conversion is skipped; the timed steps never touch it."""
    try:
        import sae_lens  # noqa: F401
        return True
    except ImportError:
        stub = types.ModuleType("sae_lens")

        class _Missing:
            def __init__(self, *a, **k):
                raise ImportError("sae_lens is not installed (bench/gpu.py placeholder)")

        stub.SAE = stub.TopKSAE = stub.TopKSAEConfig = _Missing
        sys.modules["sae_lens"] = stub
        return False


def ensure_datasets() -> str:
    """TransformerLens imports ``datasets`` at import time (type hints, dataset helpers nobody calls
    here). If it does not import on the machine (e.g. a pyarrow older than it needs), placeholder
    modules stand in, so that the models still load; the error is reported."""
    try:
        import datasets  # noqa: F401
        return "ok"
    except Exception as exc:
        for k in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
            del sys.modules[k]
        stub = types.ModuleType("datasets")
        stub.__path__ = []
        for sub, names in (("arrow_dataset", ["Dataset"]), ("iterable_dataset", ["IterableDataset"]),
                           ("load", ["load_dataset"])):
            m = types.ModuleType(f"datasets.{sub}")
            for n in names:
                setattr(m, n, type(n, (), {}))
                setattr(stub, n, getattr(m, n))
            sys.modules[m.__name__] = m
            setattr(stub, sub, m)
        sys.modules["datasets"] = stub
        return f"placeholder ({err(exc)})"


def synthetic_docs(seed: int = 0, n_docs: int = 100_000):
    """Deterministic pseudo-English documents made of the tiny tokenizers' training words."""
    from stitchplug_models.tiny import TRAIN_TEXT

    words = TRAIN_TEXT.split()
    rng = random.Random(seed)
    for i in range(n_docs):
        sents = []
        for _ in range(rng.randint(8, 40)):
            sents.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 20))).capitalize() + ".")
        yield {"text": " ".join(sents), "doc_id": f"synthetic-{i}"}


def register_corpus() -> None:
    """Register the synthetic corpus (and the first-party aligners) without an installed package:
    on the GPU machine stitchplug is not pip-installed, so there are no entry points to load."""
    from stitchplug import plugins
    from stitchplug.api import hookimpl

    class BenchPlugin:
        @hookimpl
        def register_corpora(self, register):
            register(CORPUS, lambda **kw: synthetic_docs(), description="synthetic text (bench/gpu.py)",
                     source="bench/gpu.py")

    plugins.load_plugins()
    if not plugins.pm.has_plugin("corpora"):
        import stitchplug_corpora
        plugins.pm.register(stitchplug_corpora, name="corpora")
    if not plugins.pm.has_plugin("gpu-bench"):
        plugins.pm.register(BenchPlugin(), name="gpu-bench")
    plugins._registry = None  # rebuilt on next use, with the plugins above


def model_spec(which: str, tiny: bool) -> dict:
    """TransformerLens config of gemma-2-2b / gemma-2-9b (offline, from TL's own table)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    spec = convert_hf_model_config(f"google/gemma-2-{which}")
    for k in ("quantization_method", "tokenizer_name", "d_vocab", "n_ctx"):
        spec.pop(k, None)
    if tiny:  # same architecture fields, tiny widths; layers as many as the hooked layer needs + 1
        spec.update(d_model={"2b": 48, "9b": 64}[which], d_head=16, n_heads=4, n_key_value_heads=2,
                    d_mlp={"2b": 96, "9b": 128}[which], n_layers={"2b": 4, "9b": 6}[which],
                    attn_types=(["local", "global"] * 3)[:{"2b": 4, "9b": 6}[which]])
    return spec


def build_adapter(which: str, device: str, dtype: str, tiny: bool):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from stitchplug.api import TLAdapter
    from stitchplug_models._common import model_on, torch_dtype
    from stitchplug_models.tiny import tiny_tokenizer

    spec = model_spec(which, tiny)
    tok = tiny_tokenizer("sp")
    tdtype = torch_dtype(dtype)
    cfg = HookedTransformerConfig(**spec, n_ctx=256, d_vocab=len(tok), dtype=tdtype, device=device,
                                  default_prepend_bos=True, tokenizer_prepends_bos=False)
    torch.manual_seed(0)
    with torch.device(device):  # allocate and initialise on the GPU (9B parameters: no host round trip)
        model = HookedTransformer(cfg, move_to_device=False)
    model.tokenizer = tok
    model = model_on(model, device, tdtype)
    adapter = TLAdapter(f"gemma-2-{which}-shape-random", model, tok, prepend_bos=True, bos_id=tok.bos_token_id)
    adapter.source = "random init (bench/gpu.py)"
    return adapter


def run_flops_per_token(adapter, layer: int, ctx: int) -> float:
    """Matmul FLOPs per token of a forward stopped before block ``layer``: 2 x parameters of the blocks
    run (norms included, negligible) + attention scores and mixing (TL computes full ``ctx x ctx``)."""
    cfg = adapter.model.cfg
    params = sum(p.numel() for b in adapter.model.blocks[:layer] for p in b.parameters())
    return 2.0 * params + layer * 4.0 * cfg.n_heads * cfg.d_head * ctx
