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

