"""Tiny random-init models and in-memory tokenizers for tests: no files, no downloads, < 1 s.

Two different tokenizers are trained on a fixed built-in text with the ``tokenizers`` library
(deterministic), so tests can exercise both a same-tokenizer pair and a cross-tokenizer pair:

- ``bpe``: byte-level BPE like GPT-2 / SmolLM2 (``Ġword`` tokens), vocab 384, ``<s>`` BOS.
- ``sp``: SentencePiece-style BPE like Gemma (``▁word`` tokens, byte fallback ``<0xNN>``),
  vocab 512, ``<bos>`` BOS at id 2.

Models (weights from a fixed seed, identical on every build):

=============  =========  ======  ========  ====================================================
name           tokenizer  d_model  layers   architecture
=============  =========  ======  ========  ====================================================
tiny-llama-a   bpe        32      2         Llama: rotary, RMSNorm, gated SiLU MLP, GQA 4q/2kv
tiny-llama-b   bpe        48      3         Llama: rotary, RMSNorm, gated SiLU MLP, GQA 6q/2kv
tiny-gemma3    sp         40      3         Gemma-3: local/global attention, qk-norm, pre+post
                                            norms, GQA 4q/1kv, gated GELU MLP, d_head 16
tiny-gpt2      bpe        32      2         GPT-2: learned positions, LayerNorm, GELU MLP
=============  =========  ======  ========  ====================================================
"""

from __future__ import annotations

import functools
import json
import warnings

import torch

from stitchplug.api import TLAdapter

from ._common import model_on, torch_dtype

SEED = 1234

TRAIN_TEXT = """\
The river flows past the old mill and into the valley, where farmers grow wheat and barley.
In the spring the water rises, and the children watch the boats drift slowly towards the sea.
A model of language reads text one token at a time and predicts the next token from the ones before.
Stitching two models means learning an affine map from the residual stream of one to the other.
Sparse autoencoders find features; probes read them; steering vectors push the model along them.
Numbers like 12, 345 and 6789 appear in tables, dates such as 1999-12-31, and prices of $4.50.
Café, naïve, résumé, Zürich, São Paulo, Kraków and Ångström are written with accents.
東京 and 日本 are written in Japanese; Москва is written in Cyrillic; Ελλάδα in Greek.
def add(a, b):
    return a + b
The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.
"""

_BPE_SPECIALS = ["<s>", "</s>", "<pad>"]
_SP_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(kind: str) -> str:
    """Train (once per process) and serialise the raw ``tokenizers`` tokenizer of ``kind``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=_BPE_SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([TRAIN_TEXT], trainer)
        return tok.to_str()
    if kind == "sp":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        trainer = trainers.BpeTrainer(vocab_size=512 - 256, special_tokens=_SP_SPECIALS, show_progress=False)
        tok.train_from_iterator([TRAIN_TEXT], trainer)
        # Byte fallback like SentencePiece/Gemma: any character outside the vocab becomes <0xNN> bytes.
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        spec["model"]["byte_fallback"] = True
        spec["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
        return json.dumps(spec)
    raise ValueError(f"unknown tiny tokenizer kind {kind!r}")


def tiny_tokenizer(kind: str):
    """A fresh ``PreTrainedTokenizerFast`` of ``kind`` (``"bpe"`` or ``"sp"``) with offsets support."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(_tokenizer_json(kind))
    if kind == "bpe":
        return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


_LLAMA = dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
              final_rms=True, eps=1e-5, rotary_base=10000, original_architecture="LlamaForCausalLM")

CONFIGS: dict[str, dict] = {
    "tiny-llama-a": dict(_LLAMA, tokenizer="bpe", d_model=32, d_head=8, n_heads=4, n_key_value_heads=2,
                         d_mlp=64, n_layers=2, rotary_dim=8),
    "tiny-llama-b": dict(_LLAMA, tokenizer="bpe", d_model=48, d_head=8, n_heads=6, n_key_value_heads=2,
                         d_mlp=96, n_layers=3, rotary_dim=8),
    "tiny-gemma3": dict(tokenizer="sp", d_model=40, d_head=16, n_heads=4, n_key_value_heads=1, d_mlp=96,
                        n_layers=3, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
                        positional_embedding_type="rotary", rotary_dim=16, rotary_base=1_000_000,
                        rotary_base_local=10_000, use_attn_scale=True, gated_mlp=True, final_rms=True,
                        use_normalization_before_and_after=True, use_qk_norm=True, eps=1e-6,
                        use_local_attn=True, window_size=8, attn_types=["local", "local", "global"],
                        original_architecture="Gemma3ForCausalLM"),
    "tiny-gpt2": dict(tokenizer="bpe", d_model=32, d_head=8, n_heads=4, d_mlp=128, n_layers=2,
                      act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
                      eps=1e-5, original_architecture="GPT2LMHeadModel"),
}


def describe(name: str) -> str:
    c = CONFIGS[name]
    kind = {"bpe": "byte-level BPE 384", "sp": "SentencePiece-style BPE 512"}[c["tokenizer"]]
    return f"d_model {c['d_model']}, {c['n_layers']} layers, {c['original_architecture']}-style, tokenizer {kind}"


def load(name: str, device: str = "cpu", dtype: str = "float32", cache_dir: str | None = None,
         n_ctx: int = 256, **_: object) -> TLAdapter:
    """Factory: the tiny model ``name`` with deterministic random weights, wrapped in a TLAdapter."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    spec = dict(CONFIGS[name])
    tok = tiny_tokenizer(spec.pop("tokenizer"))
    tdtype = torch_dtype(dtype)
    cfg = HookedTransformerConfig(**spec, n_ctx=n_ctx, d_vocab=len(tok), dtype=torch.float32, device="cpu",
                                  default_prepend_bos=True, tokenizer_prepends_bos=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        with warnings.catch_warnings():  # TL 3.9 deprecates HookedTransformer in favour of TransformerBridge
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg, move_to_device=False)
    # Attach the in-memory tokenizer directly: set_tokenizer would reload it by name_or_path.
    model.tokenizer = tok
    model = model_on(model, device, tdtype)
    adapter = TLAdapter(name, model, tok, prepend_bos=True, bos_id=tok.bos_token_id)
    adapter.source = "random init (tests)"
    return adapter
