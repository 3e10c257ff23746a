"""Issue 22: `stitchplug experiment init-sweep` on a tiny run folder: savings per width and budget, the
recipes, single-epoch labelling, and resume after SIGKILL without retraining finished arms."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A paired cache of two random-init tiny models and an lstsq stitch (no SAE: the sweep trains its own)."""
    from stitchplug.adapter import load_model
    from stitchplug.cache.reader import open_cache
    from stitchplug.cache.writer import build_cache
    from stitchplug.config import StitchConfig
    from stitchplug.stitch import api

    run = tmp_path_factory.mktemp("sweeprun")
    a, b = load_model("tiny-llama-a"), load_model("tiny-gemma3")
    cache_path = build_cache(run / "cache.h5", a, b, tokens=3000, context_size=48,
                             source_layers=[1], target_layers=[1], progress=False, log=lambda m: None)
    with open_cache(cache_path) as cache:
        api.train(cache, StitchConfig(solver="lstsq", target_layer=1), run / "stitch" / "stitch.safetensors")
    return run


ARGS = ["--widths", "16,32", "--budgets", "640,1600", "--batch-size", "64", "--k", "4", "--lr", "3e-3",
        "--eval-every", "5", "--eval-tokens", "256", "--thresholds", "0.3,0.5,0.9", "--decode", "sparse"]


def _cli(run, *extra, sweep_dir=None):
    args = ["experiment", "init-sweep", "--run", str(run), *ARGS, *extra]
    return args + (["--sweep-dir", str(sweep_dir)] if sweep_dir else [])


def test_sweep_writes_savings_per_width_and_budget(tiny_run, capsys):
    from stitchplug.cli import main

    main(_cli(tiny_run))
    m = json.loads((tiny_run / "metrics.json").read_text())["init_experiment"]
    assert m["kind"] == "init_sweep" and m["recipe"] == "paper + lr=0.003, k=4"
    assert set(m["budgets"]) == {"640", "1600"} and set(m["widths"]) == {"16", "32"}
    assert m["all_single_epoch"] and set(m["single_epoch"]) == {f"{w}/{a}" for w in ("16", "32")
                                                                 for a in ("scratch", "fold", "rescale")}
    for w in ("16", "32"):
        arms = m["widths"][w]["arms"]
        # the same data order in every arm, at most one pass over the cache
        assert len({a["data_digest"] for a in arms.values()}) == 1
        assert all(a["passes"] <= 1.0 for a in arms.values())
        assert arms["rescale"]["init"]["ev_step0"] == pytest.approx(arms["rescale"]["init"]["ev_transferred"], abs=1e-3)
        assert arms["rescale"]["init"]["topk_selection_agreement"] == 1.0
        assert arms["scratch"]["curve"][0]["flops"] == 0 and arms["fold"]["curve"][0]["flops"] == m["stitch_flops"] > 0
        assert m["widths"][w]["source_sae"]["train_flops"] > 0
        # the small budget is the large budget's prefix: an evaluation at its last step, same values
        small = m["budgets"]["640"]["widths"][w]
        assert m["budgets"]["640"]["steps"] == 10 and any(p["step"] == 10 for p in arms["scratch"]["curve"])
        ev10 = next(p["ev"] for p in arms["fold"]["curve"] if p["step"] == 10)
        assert small["final_ev"]["fold"] == ev10
        for ws in ("fold", "rescale"):
            assert set(small["savings"][ws]["fvu"]) == {"0.30", "0.50", "0.90"}
    assert set(m["budgets"]["1600"]["fits_fvu"]) == {"scratch", "fold", "rescale"}
    report = (tiny_run / "report.md").read_text()
    assert "Recipe **paper + lr=0.003, k=4**" in report and "single-epoch" in report
    assert "| silent at step 0 | silent at end | dead at end |" in report
    assert "| at EV 0.90 without the stitch | stitch / scratch's FLOPs to EV 0.90 |" in report
    cells = [c for b in m["budgets"].values() for w in b["widths"].values() for ws in w["savings"].values()
             for c in ws["fvu"].values() if c["stitched_flops"] is not None]
    assert cells  # the stitch's FLOPs left out can only raise the saving (or its lower bound)
    for c in cells:
        if c["savings"] is not None:
            assert c["savings_excl_offset"] > c["savings"] and c["offset_share"] > 0
        else:
            assert c["savings_at_least_excl_offset"] > c["savings_at_least"]
    assert all(0.0 <= a["curve"][0]["silent_eval"] <= 1.0 for w in m["widths"].values() for a in w["arms"].values())
    assert all((tiny_run / "plots" / n).stat().st_size > 1000
               for n in ("init_sweep_saving_vs_width.png", "init_sweep_saving_vs_budget.png", "init_sweep_curves.png"))
    assert "saving at EV 0.90" in capsys.readouterr().out


def test_sweep_refuses_other_settings_in_the_same_folder(tiny_run, capsys):
    from stitchplug.cli import main

    sweep_dir = tiny_run / "other_sweep"
    main(_cli(tiny_run, "--widths", "16", "--warm-starts", "preserve", "--section", "init_sweep_b", sweep_dir=sweep_dir))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["init_sweep_b"]["config"]["warm_starts"] == ["preserve"]  # beside, not over, the first section
    assert (tiny_run / "plots" / "init_sweep_saving_vs_width_init_sweep_b.png").exists()
    assert (tiny_run / "plots" / "init_sweep_curves_init_sweep_b.png").exists()
    with pytest.raises(SystemExit) as exc:
        main(_cli(tiny_run, "--widths", "16", "--warm-starts", "preserve", "--seed", "1", sweep_dir=sweep_dir))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and "other settings" in err[0] and "seed" in err[0]


def test_bad_sweep_options_are_one_line_errors(tiny_run, capsys):
    from stitchplug.cli import main

    for bad in (["--warm-starts", "fold,bogus"], ["--widths", "a,b"], ["--budgets", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(_cli(tiny_run, *bad))
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code != 0 and len(err) == 1 and err[0].startswith("Error"), (bad, err)


def test_the_help_lists_every_warm_start(capsys):
    from stitchplug.api import WARM_STARTS
    from stitchplug.cli import main

    main(["experiment", "init-sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    listed = out.split("Comma-separated warm-start arms (")[1].split(")")[0].replace("- ", "-")
    assert listed.split(", ") == list(WARM_STARTS)


def test_killed_sweep_resumes_without_retraining_finished_arms(tiny_run, tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "OMP_NUM_THREADS": "1"}
    code = f"from stitchplug.cli import main; main({_cli(tiny_run, '--widths', '16,32', sweep_dir=sweep_dir)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not list(sweep_dir.glob("w16/stitch_*/fold.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert list(sweep_dir.glob("w16/stitch_*/fold.json")), proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*.json") if not p.parent.name.endswith("_sae")}
    arms_done = [p for p in done if p.name not in ("source.json", "transfer.json")]
    assert arms_done and not list(sweep_dir.glob("w32/stitch_*/rescale.json"))  # killed mid-sweep
    leftovers = list(sweep_dir.rglob("*.tmp*"))  # a kill mid-write may leave the one file being written
    assert len(leftovers) <= 1 and not any(p.with_suffix("").exists() for p in leftovers)  # of an unfinished piece
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for p, mtime in done.items():  # finished pieces were read back, not rewritten
        assert p.stat().st_mtime_ns == mtime, p
    for p in arms_done:
        width = (p.parent if p.stem == "scratch" else p.parent.parent).name[1:]
        assert f"width {width}: reusing arm {p.stem}" in out.stdout
    trained = out.stdout.count(": training arm ")
    assert trained == 2 * 3 - len(arms_done)
    assert list(sweep_dir.glob("w32/stitch_*/rescale.json"))
    assert not list(sweep_dir.rglob("*.tmp*"))  # the resumed sweep removed the killed write's leftover


def test_another_stitch_in_the_same_sweep_dir_trains_only_its_warm_start_arms(tiny_run, tmp_path, capsys):
    """The source SAE on A and the scratch arm do not read the stitch: a sweep with another stitch in
    the same folder reuses them (bit-identical results) and trains its own transferred SAE and warm
    arms beside the first stitch's; going back to the first stitch trains nothing."""
    from stitchplug.cache.reader import open_cache
    from stitchplug.cli import main
    from stitchplug.config import StitchConfig
    from stitchplug.stitch import api

    other = tmp_path / "other_stitch" / "stitch.safetensors"
    with open_cache(tiny_run / "cache.h5") as cache:
        api.train(cache, StitchConfig(solver="lstsq", target_layer=1, fit_tokens=512, batch_size=256), other)
    sweep_dir, first = tmp_path / "sweep", tiny_run / "stitch" / "stitch.safetensors"
    args = ["--widths", "16", "--warm-starts", "rescale", "--section", "init_sweep_stitches"]

    def sweep(stitch):
        capsys.readouterr()
        main(_cli(tiny_run, *args, "--stitch", str(stitch), sweep_dir=sweep_dir))
        out = capsys.readouterr().out
        return out, json.loads((tiny_run / "metrics.json").read_text())["init_sweep_stitches"]["widths"]["16"]

    out1, m1 = sweep(first)
    assert out1.count(": training arm ") == 2 and "training the source SAE" in out1
    out2, m2 = sweep(other)
    assert "reusing the source SAE" in out2 and "reusing arm scratch" in out2
    assert out2.count(": training arm ") == 1 and "training arm rescale" in out2
    assert m2["arms"]["scratch"]["curve"] == m1["arms"]["scratch"]["curve"]
    assert m2["arms"]["rescale"]["curve"] != m1["arms"]["rescale"]["curve"]  # another transferred SAE
    assert m2["ledger"]["stitch_flops"] < m1["ledger"]["stitch_flops"]  # fitted on fewer tokens
    folders = sorted(p.name for p in (sweep_dir / "w16").glob("stitch_*"))
    assert len(folders) == 2 and all((sweep_dir / "w16" / f / "rescale.json").exists() for f in folders)
    out3, m3 = sweep(first)
    assert ": training arm " not in out3 and m3["arms"]["rescale"]["curve"] == m1["arms"]["rescale"]["curve"]


def test_a_transferred_sae_for_another_layer_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    from stitchplug.cli import main

    sweep_dir = tmp_path / "sweep"
    args = ["--widths", "16", "--warm-starts", "rescale", "--section", "init_sweep_layer"]
    main(_cli(tiny_run, *args, sweep_dir=sweep_dir))
    (side,) = sweep_dir.glob("w16/stitch_*/transferred_sae/stitchplug.json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "hook_name": "blocks.0.hook_resid_pre"}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(_cli(tiny_run, *args, sweep_dir=sweep_dir))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and "does not read target layer 1" in err[0], err


def test_sweep_plot_points_keep_lower_bounds_and_drop_missing_crossings(tmp_path):
    """The saving plots draw an exact saving as a point, a lower bound (scratch never crossed) as a
    flagged point, and nothing where the warm start itself never crossed; every threshold gets a panel."""
    from stitchplug_sae_init.sweep_report import plot_sweep, saving_points

    def cell(s=None, at_least=None):
        return {"savings": s, "savings_at_least": at_least}

    def row(c70, c90):
        return {"savings": {"fold": {"fvu": {"0.70": c70, "0.90": c90}}}}

    result = {"recipe": "paper", "config": {"warm_starts": ["fold"]}, "widths": {"16": {}, "32": {}},
              "budgets": {"640": {"widths": {"16": row(cell(0.25), cell()), "32": row(cell(None, 0.5), cell())}}}}
    assert saving_points(result, "fold", "0.70", by="width", other="640") == [(16, 25.0, False), (32, 50.0, True)]
    assert saving_points(result, "fold", "0.90", by="width", other="640") == []
    assert saving_points(result, "fold", "0.70", by="budget", other="32") == [(640, 50.0, True)]
    paths = plot_sweep(result, tmp_path)
    assert [p.name for p in paths] == ["init_sweep_saving_vs_width.png", "init_sweep_saving_vs_budget.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_a_piece_is_keyed_without_the_configs_warm_start(tmp_path):
    """Each sweep arm is named by its own warm start, so the config's default warm start is not in a
    piece's key: a piece written when the key still held it resumes, and changing the default cannot
    refuse a finished sweep; any setting the arms do depend on still refuses."""
    from stitchplug.api import StageError
    from stitchplug_sae_init.config import InitExperimentConfig
    from stitchplug_sae_init.sweep import SweepConfig, _key, _load_piece

    sweep = SweepConfig(widths=[16], budgets=[64], warm_starts=["fold"])
    key = _key(16, sweep, InitExperimentConfig(), {"cache_tokens": 1})
    assert "warm_start" not in key
    assert key == _key(16, sweep, InitExperimentConfig(warm_start="preserve"), {"cache_tokens": 1})
    old = tmp_path / "fold.json"
    old.write_text(json.dumps({"key": {**key, "warm_start": "fold"}, "curve": []}))
    assert _load_piece(old, key)["curve"] == []
    with pytest.raises(StageError, match=r"lr \(0\.0001 -> 0\.0004\)"):
        _load_piece(old, _key(16, sweep, InitExperimentConfig(lr=4e-4), {"cache_tokens": 1}))


def test_a_source_piece_is_reused_across_settings_only_the_b_arms_use(tmp_path):
    """Resampling (or the evaluation cadence, or b_dec handling) acts on the arms on B, not on the
    source SAE on A: a sweep that changes it reuses the finished source SAE but refuses the finished
    arms, naming the setting."""
    from stitchplug.api import StageError
    from stitchplug_sae_init.config import InitExperimentConfig
    from stitchplug_sae_init.sweep import SweepConfig, _key, _load_piece, _source_key

    sweep = SweepConfig(widths=[16], budgets=[64], warm_starts=["rescale"])
    key = _key(16, sweep, InitExperimentConfig(recipe="tuned"), {"cache_tokens": 1})
    key_r = _key(16, sweep, InitExperimentConfig(resample_every=100, recipe="tuned + resample_every=100"),
                 {"cache_tokens": 1})
    for stored in (_source_key(key), key):  # a source piece written before the option existed holds the whole key
        (tmp_path / "source.json").write_text(json.dumps({"key": stored, "train_flops": 1}))
        assert _load_piece(tmp_path / "source.json", _source_key(key_r))["train_flops"] == 1
    (tmp_path / "rescale.json").write_text(json.dumps({"key": key, "curve": []}))
    with pytest.raises(StageError, match=r"resample_every \(None -> 100\)"):
        _load_piece(tmp_path / "rescale.json", key_r)
    assert _source_key(key) != _source_key(_key(16, sweep, InitExperimentConfig(lr=4e-4), {"cache_tokens": 1}))
    for b_only in ({"eval_every": 5}, {"apply_b_dec_to_input": False}, {"scratch_b_dec": "mean"}):
        other = _key(16, sweep, InitExperimentConfig(recipe="tuned", **b_only), {"cache_tokens": 1})
        assert other != key and _source_key(other) == _source_key(key), b_only


def test_sweep_resamples_dead_latents_on_request(tiny_run, tmp_path):
    from stitchplug.cli import main

    sweep_dir = tmp_path / "resampled"
    main(_cli(tiny_run, "--widths", "32", "--warm-starts", "rescale", "--batch-size", "8", "--dead-window", "2",
              "--resample-every", "5", "--section", "init_sweep_resampled", sweep_dir=sweep_dir))
    m = json.loads((tiny_run / "metrics.json").read_text())["init_sweep_resampled"]
    assert m["config"]["resample_every"] == 5 and "resample_every=5" in m["recipe"]
    arms = m["widths"]["32"]["arms"]
    for arm in arms.values():
        extra = arm["ledger"]["extra_flops"]
        assert (extra > 0) == (arm["resampled_latents"] > 0)
        assert all("dead" in p for p in arm["curve"][1:])
    assert sum(a["resampled_latents"] for a in arms.values()) > 0
