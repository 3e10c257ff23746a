"""Issue 23: `stitchplug experiment init` takes its settings' flags from InitExperimentConfig
(config_options), keeps today's flag names, layers --recipe under the flags; `command_group` is the one
`stitchplug experiment` group the plugins share. Nothing here trains: run_on_folder is replaced."""

from __future__ import annotations

import click
import pytest

from stitchplug.cli import main


@pytest.fixture
def captured(tmp_path, monkeypatch):
    """Run `experiment init` on an empty run folder and return the config it would train with."""
    import stitchplug_sae_init.command as command

    seen = {}

    def fake(run, cache_path, stitch_path, sae_dirs, cfg, epochs, *rest):
        seen.update(cfg=cfg, epochs=epochs)
        return {"widths": {}}

    monkeypatch.setattr(command, "run_on_folder", fake)
    run = tmp_path / "run"
    run.mkdir()

    def call(*flags):
        seen.clear()
        main(["experiment", "init", "--run", str(run), *flags])
        return seen["cfg"], seen["epochs"]

    return call


def _experiment_group() -> click.Group:
    from stitchplug.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    return cli.commands["experiment"]


def test_every_config_field_has_a_flag_and_todays_names_remain():
    from stitchplug_sae_init.config import InitExperimentConfig

    names = {o for p in _experiment_group().commands["init"].params for o in (*p.opts, *p.secondary_opts)}
    generated = {"--" + f.replace("_", "-") for f in InitExperimentConfig.model_fields if f != "recipe"}
    assert generated <= names, generated - names
    today = {"--run", "--cache", "--stitch", "--sae-target", "--steps", "--batch-size", "--epochs", "--recipe", "--lr",
             "--aux-k-coef", "--b-dec-in", "--no-b-dec-in", "--scratch-b-dec", "--decode", "--warm-start",
             "--eval-every", "--eval-tokens", "--ma-window", "--thresholds", "--seed", "--stitch-flops",
             "--source-sae-flops", "--target-layer"}
    assert today <= names, today - names


def test_defaults_recipe_and_overrides(captured, tmp_path):
    cfg, epochs = captured()
    assert (cfg.recipe, cfg.lr, cfg.scratch_b_dec, cfg.epochs, epochs) == ("paper", 1e-4, "zeros", 1, 1)
    assert cfg.apply_b_dec_to_input and cfg.steps == 2000 and cfg.thresholds == [0.7, 0.75, 0.8, 0.85, 0.9]
    cfg, _ = captured("--recipe", "tuned")
    assert (cfg.recipe, cfg.lr, cfg.scratch_b_dec) == ("tuned", 4e-4, "mean")
    cfg, _ = captured("--recipe", "tuned", "--lr", "1e-3", "--no-b-dec-in", "--thresholds", "0.9,0.5", "--epochs", "3")
    assert (cfg.recipe, cfg.lr, cfg.scratch_b_dec) == ("tuned + lr=0.001", 1e-3, "mean")
    assert not cfg.apply_b_dec_to_input and cfg.thresholds == [0.5, 0.9] and cfg.epochs == 3
    cfg, _ = captured("--recipe", "tuned", "--lr", "4e-4", "--apply-b-dec-to-input", "--eval-batch", "128")
    assert cfg.recipe == "tuned" and cfg.apply_b_dec_to_input and cfg.eval_batch == 128
    conf = tmp_path / "init.yaml"
    conf.write_text("scratch_b_dec: mean\nsteps: 7\n")
    cfg, _ = captured("--config", str(conf), "--steps", "9")
    assert (cfg.recipe, cfg.scratch_b_dec, cfg.steps, cfg.epochs) == ("paper + scratch_b_dec=mean", "mean", 9, 1)


def test_a_field_the_command_sets_has_no_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "init", "--run", str(tmp_path), "--source-sae-flops", "-1"])
    assert exc.value.code == 2 and capsys.readouterr().err.strip() == \
        "Error: invalid config: source_sae_flops: Input should be greater than or equal to 0"
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "init", "--run", str(tmp_path), "--recipe", "custom"])
    assert exc.value.code == 2


def test_command_group_is_shared_and_refuses_a_command():
    from stitchplug.api import PluginError, command_group

    cli = click.Group("top")
    group = command_group(cli, "experiment", "Experiments.")
    assert command_group(cli, "experiment", "ignored") is group and group.help == "Experiments."
    cli.add_command(click.Command("plain"))
    with pytest.raises(PluginError, match="not a group"):
        command_group(cli, "plain", "x")
    assert {"init", "init-sweep", "steering-fit"} <= set(_experiment_group().commands)



# `experiment init-sweep`: the same generated flags (less the fields a sweep sets itself); nothing trains.

OLD_SWEEP_FLAGS = {"--run", "--cache", "--stitch", "--sweep-dir", "--widths", "--budgets", "--warm-starts", "--k",
                   "--batch-size", "--epochs", "--recipe", "--lr", "--aux-k-coef", "--b-dec-in", "--no-b-dec-in",
                   "--scratch-b-dec", "--decode", "--eval-every", "--eval-tokens", "--ma-window", "--thresholds",
                   "--seed", "--section"}


class _Stop(Exception):
    pass


@pytest.fixture
def sweep_captured(tmp_path, monkeypatch):
    """Run `experiment init-sweep` on an empty run folder; return the (cfg, sweep, kwargs) run_sweep gets."""
    import stitchplug_sae_init.sweep as sweep

    seen = {}

    def fake(run, sweep_cfg, cfg, **kw):
        seen.update(cfg=cfg, sweep=sweep_cfg, kw=kw)
        raise _Stop

    monkeypatch.setattr(sweep, "run_sweep", fake)
    run = tmp_path / "run"
    run.mkdir()

    def call(*flags):
        seen.clear()
        with pytest.raises(_Stop):
            main(["experiment", "init-sweep", "--run", str(run), *flags])
        return seen["cfg"], seen["sweep"], seen["kw"]

    call.run = run
    return call


def _old_sweep(**given):
    """What the old hand-written command (before issue 23's follow-up) built for these flags: its flag
    defaults (batch 1024, eval-every 50, ma-window 5, thresholds 0.70..0.90, seed 0, dense, epochs 1,
    b-dec-in) and the recipe's lr/aux_k_coef/scratch_b_dec/k, as it passed them to the two configs."""
    from stitchplug_sae_init.config import RECIPES, InitExperimentConfig
    from stitchplug_sae_init.sweep import SweepConfig

    recipe = given.pop("recipe", "paper")
    r = RECIPES[recipe]
    fields = dict(thresholds=[0.70, 0.75, 0.80, 0.85, 0.90], batch_size=1024, eval_every=50, ma_window=5, seed=0,
                  decode="dense", epochs=1, lr=r["lr"], aux_k_coef=r["aux_k_coef"], apply_b_dec_to_input=True,
                  scratch_b_dec=r["scratch_b_dec"], recipe=given.pop("label", recipe))
    k = given.pop("k", r["k"])
    sweep = dict(widths=[2304, 4608, 9216, 18432], budgets=[500000, 1800000], warm_starts=["fold", "rescale"])
    sweep.update({key: given.pop(key) for key in list(given) if key in sweep})
    fields.update(given)
    return InitExperimentConfig(**fields), SweepConfig(k=k, epochs=fields["epochs"], **sweep)


def _resume_key(cfg, sweep):
    """The settings a sweep stores with each piece and compares on resume (run_sweep sets steps and epochs)."""
    from stitchplug_sae_init.sweep import _key

    cfg = cfg.model_copy(update={"steps": max(sweep.budgets) // cfg.batch_size, "epochs": sweep.epochs})
    return _key(16, sweep, cfg, {"cache_tokens": 1})


def test_sweep_flags_are_generated_and_todays_names_remain():
    from stitchplug_sae_init.command import SWEEP_EXCLUDE
    from stitchplug_sae_init.config import InitExperimentConfig

    names = {o for p in _experiment_group().commands["init-sweep"].params for o in (*p.opts, *p.secondary_opts)}
    assert OLD_SWEEP_FLAGS <= names, OLD_SWEEP_FLAGS - names
    fields = {"--" + f.replace("_", "-") for f in InitExperimentConfig.model_fields}
    excluded = {"--" + f.replace("_", "-") for f in SWEEP_EXCLUDE} - {"--recipe"}
    assert fields - excluded - {"--recipe"} <= names and not excluded & names
    assert {"--config", "--eval-batch", "--dead-window", "--apply-b-dec-to-input"} <= names


@pytest.mark.parametrize("flags, old", [
    ((), {}),
    (("--widths", "16,32", "--budgets", "640,1600", "--batch-size", "64", "--k", "4", "--lr", "3e-3",
      "--eval-every", "5", "--eval-tokens", "256", "--thresholds", "0.3,0.5,0.9", "--decode", "sparse"),
     dict(widths=[16, 32], budgets=[640, 1600], batch_size=64, k=4, lr=3e-3, eval_every=5, thresholds=[0.3, 0.5, 0.9],
          decode="sparse", label="paper + lr=0.003, k=4")),
    (("--recipe", "tuned", "--k", "32", "--no-b-dec-in", "--scratch-b-dec", "zeros", "--aux-k-coef", "0.1",
      "--epochs", "2", "--ma-window", "7", "--seed", "3", "--warm-starts", "preserve"),
     dict(recipe="tuned", apply_b_dec_to_input=False, scratch_b_dec="zeros", aux_k_coef=0.1, epochs=2, ma_window=7,
          seed=3, warm_starts=["preserve"], label="tuned + aux_k_coef=0.1, scratch_b_dec=zeros")),
    (("--b-dec-in", "--lr", "1e-4", "--k", "64"), {}),
])
def test_sweep_settings_and_resume_key_are_the_old_commands(sweep_captured, flags, old):
    cfg, sweep, _ = sweep_captured(*flags)
    want_cfg, want_sweep = _old_sweep(**old)
    assert cfg.model_dump() == want_cfg.model_dump() and sweep.model_dump() == want_sweep.model_dump()
    assert _resume_key(cfg, sweep) == _resume_key(want_cfg, want_sweep)


def test_every_old_sweep_flag_parses(sweep_captured, tmp_path):
    cfg, sweep, kw = sweep_captured(
        "--cache", "c.h5", "--stitch", "s.safetensors", "--sweep-dir", str(tmp_path / "sd"), "--widths", "8",
        "--budgets", "100", "--warm-starts", "fold", "--k", "2", "--batch-size", "10", "--epochs", "2",
        "--recipe", "tuned", "--lr", "1e-3", "--aux-k-coef", "0.5", "--no-b-dec-in", "--scratch-b-dec", "zeros",
        "--decode", "sparse", "--eval-every", "3", "--eval-tokens", "99", "--ma-window", "2", "--thresholds", "0.6",
        "--seed", "4", "--section", "other")
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.aux_k_coef, cfg.apply_b_dec_to_input, cfg.scratch_b_dec,
            cfg.decode, cfg.eval_every, cfg.ma_window, cfg.thresholds, cfg.seed) == \
        (10, 2, 1e-3, 0.5, False, "zeros", "sparse", 3, 2, [0.6], 4)
    assert (sweep.widths, sweep.budgets, sweep.warm_starts, sweep.k, sweep.epochs) == ([8], [100], ["fold"], 2, 2)
    assert kw["eval_tokens"] == 99 and str(kw["cache_path"]) == "c.h5" and kw["sweep_dir"] == tmp_path / "sd"
    assert cfg.recipe == "tuned + lr=0.001, aux_k_coef=0.5, scratch_b_dec=zeros, k=2"


def test_the_documented_sweep_commands_parse(sweep_captured):
    import re
    import shlex
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = "\n".join((docs / n).read_text() for n in ("flops.md", "init_results.md")).replace("\\\n", " ")
    commands = re.findall(r"^stitchplug experiment init-sweep (.*)$", text, re.M)
    assert len(commands) >= 3
    for line in commands:
        argv = shlex.split(line.split("#")[0].replace("RUN", str(sweep_captured.run)))
        assert "--run" not in argv or str(sweep_captured.run) in argv, line  # RUN, not a folder of the cwd
        recipe = argv[argv.index("--recipe") + 1] if "--recipe" in argv else "paper"
        cfg, sweep, _ = sweep_captured(*argv)
        assert cfg.recipe.split(" + ")[0] == recipe and cfg.decode == "sparse", line


@pytest.mark.parametrize("flags, line", [
    (("--batch-size", "0"), "Error: invalid config: batch_size: Input should be greater than or equal to 1"),
    (("--epochs", "0"), "Error: invalid config: epochs: Input should be greater than or equal to 1"),
    (("--thresholds", "0.5,1.5"),
     "Error: invalid config: thresholds: thresholds must be explained-variance values strictly between 0 and 1"),
    (("--seed", "-1"), "Error: invalid config: seed: Input should be greater than or equal to 0"),
    (("--lr", "0"), "Error: invalid config: lr: Input should be greater than 0"),
    (("--decode", "bogus"), None), (("--batch-size", "x"), None), (("--k", "0"), None),
])
def test_a_bad_sweep_value_is_one_line(tmp_path, capsys, flags, line):
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "init-sweep", "--run", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("Error: "), err
    assert line is None or err[0] == line


def test_a_sweep_config_file_cannot_set_what_the_sweep_sets(tmp_path, capsys, sweep_captured):
    conf = tmp_path / "sweep.yaml"
    conf.write_text("scratch_b_dec: mean\nsteps: 7\nepochs: null\n")
    cfg, sweep, _ = sweep_captured("--config", str(conf))  # steps: the budgets set it; epochs null: single-epoch
    assert (cfg.recipe, cfg.scratch_b_dec, cfg.epochs, sweep.epochs) == ("paper + scratch_b_dec=mean", "mean", 1, 1)
    conf.write_text("warm_start: preserve\n")
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "init-sweep", "--run", str(tmp_path), "--config", str(conf)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == ["Error: invalid config: warm_start: not a setting of init-sweep "
                                           "(it uses --warm-starts)"]
