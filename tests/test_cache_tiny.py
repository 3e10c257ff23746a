"""Tiny random-init model pair with two different real BPE tokenizers, for the cache tests.

Import ``tiny_adapter`` from here (subprocess tests do too). Tokenizers are trained once on a few
Wikipedia articles with the ``tokenizers`` library and saved under a folder, so every process
builds exactly the same models.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

SPECIALS = ["<bos>", "<eos>", "<pad>"]
TINY = {"tiny-a": (400, 0, 0), "tiny-b": (700, 1, 100), "tiny-a2": (400, 2, 0)}
"""name -> (BPE vocab size, weight seed, first training document)."""


def _tokenizer(root: Path, vocab: int, first_doc: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = root / f"bpe{vocab}_{first_doc}.json"
    if not path.exists():
        from stitchplug.cache.corpus import open_corpus

        texts = [d["text"] for d in open_corpus("wiki-en", start=first_doc, limit=150)]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def tiny_adapter(name: str, root: str | Path):
    """A 4-layer random-init ``TLAdapter`` named ``name`` (see :data:`TINY`)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from stitchplug.adapter import TLAdapter

    vocab, seed, first_doc = TINY[name]
    tok = _tokenizer(Path(root), vocab, first_doc)
    d = 32 if name != "tiny-b" else 48
    cfg = HookedTransformerConfig(n_layers=4, d_model=d, n_heads=4, d_head=d // 4, d_mlp=2 * d, n_ctx=256,
                                  d_vocab=len(tok), act_fn="gelu_new", normalization_type="LN",
                                  seed=seed, device="cpu")
    torch.manual_seed(seed)
    model = HookedTransformer(cfg)
    return TLAdapter(name, model, tok, prepend_bos=True)


def test_tiny_pair_tokenizes_with_offsets(tmp_path):
    a = tiny_adapter("tiny-a", tmp_path)
    b = tiny_adapter("tiny-b", tmp_path)
    text = "Paris is the capital of France."
    ea, eb = a.encode(text), b.encode(text)
    assert ea.special[0] and eb.special[0] and int(ea.ends[0]) == -1
    assert int(ea.ends[-1]) == len(text) == int(eb.ends[-1])
    assert a.tokenizer_fingerprint() != b.tokenizer_fingerprint()
    assert len(ea) != len(eb)  # different segmentations
    acts = b.capture(eb.ids[None], [1, 3])
    assert acts[3].shape == (1, len(eb), 48)
