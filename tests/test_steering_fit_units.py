"""The steering-fit experiment's pieces without models: sizes and labels, held-out draws kept out of
fitting, the split coverage of a mix, the paired bootstrap and which swap accounts for a failure."""

from __future__ import annotations

import numpy as np
import pytest

from stitchplug.errors import ConfigError, StageError
from stitchplug_steering.data import _load
from stitchplug_steering.fitexp_config import SteeringFitConfig, fit_label, folder_name, parse_sizes
from stitchplug_steering.fitexp_report import boot_diff, boot_gap, summarise
from stitchplug_steering.heldout import (assert_disjoint, overlaps, qualify, require_heldout, select_heldout,
                                         split_coverage, split_docs)
from stitchplug_steering.stats import share

MIX = "mix:wiki-en=0.6,wiki-fr=0.2,wiki-es=0.2"


def test_sizes_and_labels():
    assert parse_sizes("quick, 1m,24k,500000") == [24_000, 1_000_000, 24_000, 500_000]
    for bad in ("abc", "0", "1.5", ""):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    assert fit_label("wiki-en") == "wiki-en"
    assert folder_name(MIX, 24000) == "mix-wiki-en60-wiki-fr20-wiki-es20-24000"
    odd = fit_label("file:/tmp/a b/c.jsonl")
    assert "/" not in odd and " " not in odd and odd != fit_label("file:/tmp/a b/d.jsonl")


class FakeCache:
    def __init__(self, train, eval_):
        self.keys = {"train": train, "eval": eval_}

    def doc_keys(self, split=None):
        return self.keys[split] if split else self.keys["train"] + self.keys["eval"]


def test_mix_ids_are_split_by_component():
    assert qualify(MIX, "wiki-fr:Paris") == ("wiki-fr", "Paris")
    assert qualify("wiki-en", "Paris") == ("wiki-en", "Paris")
    assert qualify(MIX, "wiki-en:A: B") == ("wiki-en", "A: B")
    with pytest.raises(StageError):
        qualify(MIX, "wiki-de:Berlin")
    cache = FakeCache(["wiki-en:A", "wiki-fr:B", "wiki-en:C"], ["wiki-es:D"])
    assert split_coverage(cache, MIX) == {"wiki-en": {"train": 2, "eval": 0}, "wiki-fr": {"train": 1, "eval": 0},
                                          "wiki-es": {"train": 0, "eval": 1}}
    assert split_docs(cache, MIX, "train") == {("wiki-en", "A"), ("wiki-fr", "B"), ("wiki-en", "C")}
    with pytest.raises(StageError, match="no document of wiki-en, wiki-fr"):
        require_heldout("runs/x", split_coverage(cache, MIX))
    require_heldout("runs/x", split_coverage(FakeCache(["wiki-en:A"], ["wiki-en:B"]), "wiki-en"))


def test_heldout_draws_avoid_every_fitted_document_and_each_other():
    en, fr = sorted(_load("en")), sorted(_load("fr"))
    rng = np.random.default_rng(1)
    # fit on 90% of English and half of French, as a 1M-token English stitch plus a mix would
    fitted = {("wiki-en", t) for t in rng.choice(en, int(0.9 * len(en)), replace=False)}
    fitted |= {("wiki-fr", t) for t in rng.choice(fr, len(fr) // 2, replace=False)}
    held = select_heldout(fitted, ["fr", "es"], vector_docs=40, n_prompts=40, prompt_words=8, fvu_docs=10, seed=3)
    counts = overlaps(held, fitted)
    assert counts and not any(counts.values())
    assert len(held.prompts) == 40 and all(len(p["text"].split()) <= 8 for p in held.prompts)
    assert all(("wiki-en", t) not in fitted and ("wiki-fr", t) not in fitted for t, _, _ in held.pairs["fr"])
    again = select_heldout(fitted, ["fr", "es"], vector_docs=40, n_prompts=40, prompt_words=8, fvu_docs=10, seed=3)
    assert again.prompts == held.prompts and again.fvu_titles == held.fvu_titles
    other = select_heldout(fitted, ["fr", "es"], vector_docs=40, n_prompts=40, prompt_words=8, fvu_docs=10, seed=4)
    assert other.prompts != held.prompts
    # the prompts are a random draw, not the first titles in order
    titles = [p["doc_id"] for p in held.prompts]
    assert titles != sorted(titles)
    with pytest.raises(ConfigError, match="held out from every fit"):
        select_heldout(fitted, ["fr"], vector_docs=5, n_prompts=5000, prompt_words=8, fvu_docs=10, seed=3)
    with pytest.raises(StageError, match="prompts_x_fitting=2"):
        assert_disjoint(counts | {"prompts_x_fitting": 2})


def test_paired_bootstrap():
    same = boot_diff([1, 0, 1, 0], [1, 0, 1, 0], 500, 0)
    assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    up = boot_diff([1] * 20, [0] * 20, 500, 0)
    assert up["diff"] == 1.0 and up["ci_low"] == 1.0
    mixed = boot_diff([1] * 10 + [0] * 10, [0] * 20, 2000, 0)
    assert 0 < mixed["ci_low"] < 0.5 < mixed["ci_high"] < 1
    g = boot_gap(native=[1] * 10 + [0] * 10, tr=[1] * 5 + [0] * 15, none=[0] * 20, n=1000, seed=0)
    assert g["gap"] == pytest.approx(0.5) and g["ci_low"] < 0.5 < g["ci_high"]
    assert boot_gap([0] * 5, [0] * 5, [0] * 5, 200, 0)["gap"] is None


def _arm(hits, lang="fr", side="B"):
    n = len(hits)
    return {"n": n, "hits": {lang: hits}, "share": {lang: share(sum(hits), n)}, "info": {}, "side": side}


def test_the_swap_that_recovers_the_share_is_named():
    n = 30
    none, native, zero = [0] * n, [1] * 25 + [0] * 5, [0] * n
    cfg = SteeringFitConfig(fitting=["wiki-en", MIX], sizes=[1000], languages=["fr"], bootstrap=500)
    fits = [{"corpus": "wiki-en", "tokens": 1000, "folder": "en"}, {"corpus": MIX, "tokens": 1000, "folder": "mix"}]
    coverage = {"en": {"wiki-en": {"train": 9, "eval": 1}},
                "mix": {c: {"train": 3, "eval": 1} for c in ("wiki-en", "wiki-fr", "wiki-es")}}
    en, mix = folder_name("wiki-en", 1000), folder_name(MIX, 1000)
    arms = {"B/none": _arm(none), "A/none": _arm(none, side="A"),
            "B/fr/native": _arm(native), "A/fr/native": _arm(native, side="A")}
    for fit in (en, mix):
        for dst, d in (("B", "up"), ("A", "down")):
            arms[f"{fit}/{dst}/fr/tr-zmap-{d}"] = _arm(zero, side=dst)
            arms[f"{fit}/{dst}/fr/tr-xm-{d}"] = _arm(zero, side=dst)
            arms[f"{fit}/{dst}/fr/tr-{d}"] = _arm(zero, side=dst)
    arms[f"{mix}/B/fr/tr-up"] = _arm([1] * 20 + [0] * 10)        # up transfers once French is fitted
    arms[f"{en}/A/fr/tr-xm-down"] = _arm([1] * 18 + [0] * 12, side="A")  # down needs the massive dims out
    for f in fits:
        f.update(meta={"source_layer": 1, "target_layer": 2}, fvu={"fr": {d: {"fvu": 0.5, "fvu_excl_massive": 0.4} for d in ("up", "down")}})
    res = summarise(cfg, fits, arms, coverage, {"x": 0}, {"A": {}, "B": {}})
    cells = {(c["fit"], c["direction"]): c for c in res["cells"]}
    assert cells[(en, "up")]["failed"] and cells[(en, "up")]["accounts"] == ["coverage"]
    assert not cells[(en, "up")]["covered"] and cells[(mix, "up")]["covered"]
    assert not cells[(mix, "up")]["failed"] and cells[(mix, "up")]["gap"]["gap"] == pytest.approx(
        (25 / 30 - 20 / 30) / (25 / 30))
    assert cells[(en, "down")]["accounts"] == ["massive"]
    assert cells[(mix, "down")]["accounts"] == []
    assert cells[(en, "up")]["fvu"]["fvu"] == 0.5
    from stitchplug_steering.fitexp_report import markdown

    md = markdown(res)
    assert "| wiki-en (no target-language text fitted) | 1,000 | up | fr |" in md
    assert "| coverage |" in md.replace("| coverage | massive | z |", "| coverage |")
    row = next(ln for ln in md.splitlines() if ln.startswith("| wiki-en | 1,000 | down | fr |"))
    assert row.endswith("| massive |")


def test_command_flags_are_generated_from_the_config(monkeypatch, tmp_path):
    """Every SteeringFitConfig field but the three the command spells itself is a generated flag (the
    earlier spellings --prompts and --second-detector still work); no flag means the config's default,
    a --config file sets fields and a flag overrides the file."""
    import click
    from click.testing import CliRunner

    import stitchplug_steering.fitexp as fitexp
    from stitchplug_steering.fitexp_cli import OWN_FLAGS, add_command

    cli = click.Group("stitchplug")
    add_command(cli)
    cmd = cli.commands["experiment"].commands["steering-fit"]
    generated = {p.name[len("cfg__"):] for p in cmd.params if p.name.startswith("cfg__")}
    assert generated == set(SteeringFitConfig.model_fields) - set(OWN_FLAGS)
    seen = []
    monkeypatch.setattr(fitexp, "run_experiment", lambda root, cfg, **kw: seen.append(cfg) or {"cells": []})
    run = CliRunner().invoke
    res = run(cli, ["experiment", "steering-fit", "--run-root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    want = SteeringFitConfig().model_dump() | {"run_overrides": {"device": "cpu"}}
    assert seen[-1].model_dump() == want
    conf = tmp_path / "fit.yaml"
    conf.write_text("vector_docs: 5\nz_mode: offset\nn_prompts: 9\n")
    res = run(cli, ["experiment", "steering-fit", "--run-root", str(tmp_path), "--config", str(conf), "--prompts", "7",
                    "--second-detector", "none", "--no-fluency", "--sizes", "24k", "--fitting", "wiki-en"])
    assert res.exit_code == 0, res.output
    got = seen[-1]
    assert (got.vector_docs, got.z_mode, got.n_prompts, got.agreement_detector, got.fluency) == (5, "offset", 7, "none", False)
    assert got.sizes == [24_000] and got.fitting == ["wiki-en"]
    res = run(cli, ["experiment", "steering-fit", "--run-root", str(tmp_path), "--z-scale", "1000"])
    # (the stitchplug CLI prints a ConfigError as one line; a bare click group passes it on)
    assert res.exit_code != 0 and "invalid config: z_scale" in str(res.exception) and len(seen) == 2
