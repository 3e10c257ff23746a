"""The one interface everything model-facing goes through, and its TransformerLens implementation.

Layers are numbered as TransformerLens numbers blocks: layer ``l`` means the residual stream
*before* block ``l`` (``blocks.{l}.hook_resid_pre``), valid for ``0 <= l < n_layers``.
Token ids are ``LongTensor [batch, pos]``; activations ``[batch, pos, d_model]``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .errors import StageError, StitchplugError
from .hooks import resid_hook

Patch = Callable[[torch.Tensor], torch.Tensor]
"""A function ``resid [batch, pos, d] -> resid`` applied at a layer's ``resid_pre`` hook."""


@dataclass
class Encoded:
    """One text tokenised: ids, character end offsets (``-1`` for specials), special mask."""

    ids: torch.Tensor
    ends: torch.Tensor
    special: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``[batch, pos - 1]`` of ``logits [batch, pos, vocab]`` against the next token of
    ``ids``, as ``logsumexp - logit`` (no ``[batch, pos, vocab]`` log-softmax is materialised: for a
    262k vocabulary that tensor is the size of the logits)."""
    logits = logits[:, :-1].float()
    target = ids[:, 1:, None].to(logits.device)
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, target).squeeze(-1)


class ModelAdapter(ABC):
    """What stitchplug needs from a model. Subclass this to support a non-TransformerLens model."""

    name: str
    d_model: int
    n_layers: int
    tokenizer: object
    n_ctx: int | None = None
    """Longest sequence the model reads (positions); ``None`` if unbounded or unknown."""

    def check_length(self, n: int, what: str = "a sequence") -> None:
        """One-line StageError when ``n`` tokens exceed the model's context size (instead of a shape
        mismatch deep inside the model)."""
        if self.n_ctx is not None and n > self.n_ctx:
            raise StageError(f"{what} of {n} tokens is longer than model {self.name!r} reads "
                             f"(context size n_ctx = {self.n_ctx})")

    def hook_name(self, layer: int) -> str:
        self.check_layer(layer)
        return resid_hook(layer)

    def check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise StitchplugError(
                f"layer {layer} is out of range for model {self.name!r} (valid: 0..{self.n_layers - 1})"
            )

    @property
    @abstractmethod
    def special_ids(self) -> frozenset[int]:
        """Ids masked out everywhere (BOS/EOS/pad/chat markers)."""

    @abstractmethod
    def encode(self, text: str) -> Encoded:
        """Tokenise ``text`` (with BOS if the model expects one) and give character end offsets."""

    @abstractmethod
    def capture(self, ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Residual stream before each of ``layers``, running only as far as needed."""

    @abstractmethod
    def logits(self, ids: torch.Tensor, patches: dict[int, Patch] | None = None) -> torch.Tensor:
        """Full forward pass, with ``patches[layer]`` applied at that layer's ``resid_pre``."""

    @abstractmethod
    def unembed(self) -> torch.Tensor:
        """The unembedding matrix ``W_U [d_model, d_vocab]``."""

    @abstractmethod
    def generate(self, prompt: str, max_new_tokens: int = 64, patches: dict[int, Patch] | None = None,
                 temperature: float = 0.0, seed: int = 0) -> str:
        """Generate a continuation of ``prompt`` (greedy when ``temperature == 0``)."""

    def generate_many(self, prompts: Sequence[str], max_new_tokens: int = 64,
                      patches: dict[int, Patch] | None = None, temperature: float = 0.0, seed: int = 0,
                      batch_size: int = 16) -> list[str]:
        """:meth:`generate` for every prompt (prompt ``i`` with seed ``seed + i``). Adapters may batch
        greedy decoding; the default calls :meth:`generate` once per prompt."""
        return [self.generate(p, max_new_tokens=max_new_tokens, patches=patches, temperature=temperature,
                              seed=seed + i) for i, p in enumerate(prompts)]

    def token_losses(self, ids: torch.Tensor, patches: dict[int, Patch] | None = None) -> torch.Tensor:
        """Next-token cross-entropy ``[batch, pos - 1]`` (position t predicts token t + 1)."""
        return next_token_ce(self.logits(ids, patches), ids)

    def token_losses_many(self, ids: torch.Tensor,
                          variants: Mapping[str, dict[int, Patch] | None]) -> dict[str, torch.Tensor]:
        """:meth:`token_losses` of the same ``ids`` under each patch set in ``variants`` (``None``: clean).

        The default runs one full forward per variant; :class:`TLAdapter` runs the shared part of the
        forward (up to the first patched layer) once."""
        return {key: self.token_losses(ids, patches) for key, patches in variants.items()}

    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary; two adapters with the same fingerprint tokenise identically."""
        vocab = self.tokenizer.get_vocab()
        blob = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class TLAdapter(ModelAdapter):
    """A :class:`ModelAdapter` over a TransformerLens ``HookedTransformer`` and an HF fast tokenizer."""

    def __init__(self, name: str, model, tokenizer, prepend_bos: bool = True, bos_id: int | None = None):
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.d_model = int(model.cfg.d_model)
        self.n_layers = int(model.cfg.n_layers)
        self.n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0) or None
        self.prepend_bos = prepend_bos
        self.bos_id = bos_id if bos_id is not None else tokenizer.bos_token_id
        self.source = ""
        if prepend_bos and self.bos_id is None:
            raise StitchplugError(f"model {name!r}: prepend_bos is set but the tokenizer has no BOS token")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def special_ids(self) -> frozenset[int]:
        ids = set(self.tokenizer.all_special_ids)
        if self.bos_id is not None:
            ids.add(int(self.bos_id))
        return frozenset(int(i) for i in ids)

    def encode(self, text: str) -> Encoded:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        ends = [int(e) for _, e in enc["offset_mapping"]]
        if self.prepend_bos:
            ids = [int(self.bos_id)] + ids
            ends = [-1] + ends
        special = self.special_ids
        spec = [i in special for i in ids]
        ends = [-1 if s else e for s, e in zip(spec, ends)]
        return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(ends, dtype=torch.long),
                       torch.tensor(spec, dtype=torch.bool))

    @torch.inference_mode()
    def capture(self, ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        layers = sorted(set(int(l) for l in layers))
        for layer in layers:
            self.check_layer(layer)
        self.check_length(int(ids.shape[-1]), "an input")
        out: dict[int, torch.Tensor] = {}
        top = layers[-1]

        def save(act, hook):
            out[int(hook.name.split(".")[1])] = act.detach()

        hooks = [(self.hook_name(l), save) for l in layers if l != top]
        if hooks:
            resid = self.model.run_with_hooks(ids.to(self.device), fwd_hooks=hooks, stop_at_layer=top)
        else:  # one layer: a plain forward (run_with_hooks resets every hook point, ~1% of a forward)
            resid = self.model(ids.to(self.device), stop_at_layer=top)
        out[top] = resid.detach()
        return out

    def _hooks(self, patches: dict[int, Patch] | None):
        hooks = []
        for layer, fn in (patches or {}).items():
            hooks.append((self.hook_name(layer), lambda act, hook, fn=fn: fn(act)))
        return hooks

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, patches: dict[int, Patch] | None = None) -> torch.Tensor:
        self.check_length(int(ids.shape[-1]), "an input")
        return self.model.run_with_hooks(ids.to(self.device), fwd_hooks=self._hooks(patches))

    @torch.inference_mode()
    def token_losses_many(self, ids: torch.Tensor,
                          variants: Mapping[str, dict[int, Patch] | None]) -> dict[str, torch.Tensor]:
        """The blocks before the first patched layer run once; each variant runs the rest (its patch
        at that layer applied to a copy of the shared residual, later patches as hooks). Right
        padding only (no attention mask), as in :meth:`logits`, so the numbers are those of
        :meth:`token_losses` per variant."""
        layers = [l for patches in variants.values() for l in (patches or {})]
        for l in layers:
            self.check_layer(l)
        if getattr(self.model.cfg, "positional_embedding_type", None) == "shortformer":
            return super().token_losses_many(ids, variants)  # blocks take a positional input start_at_layer lacks
        self.check_length(int(ids.shape[-1]), "an input")
        ids = ids.to(self.device)
        if not layers:
            clean = next_token_ce(self.model(ids), ids)
            return {key: clean for key in variants}
        start = min(layers)
        resid = self.model(ids, stop_at_layer=start)
        out = {}
        for key, patches in variants.items():
            patches = dict(patches or {})
            first = patches.pop(start, None)
            r = first(resid.clone()) if first is not None else resid
            logits = self.model.run_with_hooks(r, start_at_layer=start, fwd_hooks=self._hooks(patches))
            out[key] = next_token_ce(logits, ids)
        return out

    def unembed(self) -> torch.Tensor:
        return self.model.W_U.detach()

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 64, patches: dict[int, Patch] | None = None,
                 temperature: float = 0.0, seed: int = 0) -> str:
        torch.manual_seed(seed)
        ids = self.encode(prompt).ids[None].to(self.device)
        self.check_length(int(ids.shape[1]) + max_new_tokens, f"a prompt of {ids.shape[1]} tokens plus "
                                                              f"max_new_tokens {max_new_tokens}")
        with self.model.hooks(fwd_hooks=self._hooks(patches)):
            out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                      temperature=max(temperature, 1e-5), verbose=False,
                                      stop_at_eos=True, return_type="tokens")
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    @torch.inference_mode()
    def generate_many(self, prompts: Sequence[str], max_new_tokens: int = 64,
                      patches: dict[int, Patch] | None = None, temperature: float = 0.0, seed: int = 0,
                      batch_size: int = 16) -> list[str]:
        """Greedy decoding of ``batch_size`` prompts at a time, left-padded with an attention mask
        (TransformerLens's batched path: rotary positions start at each row's first real token, pads
        are never attended, and a patch's edits at pad positions reach no real token). One token
        step reads every weight once, so on a CPU a batch of 16 costs about what one prompt does.
        Sampling (``temperature > 0``) keeps one prompt per call so that prompt ``i`` uses seed
        ``seed + i`` whatever the batch size."""
        tok = self.model.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        if temperature > 0 or pad is None or pad == self.bos_id:
            return super().generate_many(prompts, max_new_tokens, patches, temperature, seed, batch_size)
        out: list[str] = []
        for start in range(0, len(prompts), max(1, int(batch_size))):
            encs = [self.encode(p).ids for p in prompts[start:start + batch_size]]
            width = max(len(e) for e in encs)
            self.check_length(width + max_new_tokens, f"a prompt of {width} tokens plus max_new_tokens {max_new_tokens}")
            ids = torch.full((len(encs), width), int(pad), dtype=torch.long)
            for row, e in enumerate(encs):
                ids[row, width - len(e):] = e
            side, tok.padding_side = tok.padding_side, "left"
            try:
                with self.model.hooks(fwd_hooks=self._hooks(patches)):
                    res = self.model.generate(ids.to(self.device), max_new_tokens=max_new_tokens, do_sample=False,
                                              verbose=False, stop_at_eos=True, return_type="tokens")
            finally:
                tok.padding_side = side
            out += [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in res]
        return out


def load_model(name: str, device: str = "cpu", dtype: str = "float32", cache_dir: str | None = None,
               **kwargs) -> ModelAdapter:
    """Build the adapter registered under ``name`` by some plugin."""
    from .plugins import registry

    entry = registry().get("models", name)
    return entry.factory(device=device, dtype=dtype, cache_dir=cache_dir, **kwargs)
