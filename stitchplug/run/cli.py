"""``stitchplug run``: the whole pipeline on one command."""

from __future__ import annotations

import click

from ..config import RunConfig


def register(cli: click.Group) -> None:
    from ..cli import config_options

    @cli.command("run")
    @config_options(RunConfig)
    @click.option("--no-progress", is_flag=True, help="Hide progress bars.")
    def run_cmd(cfg: RunConfig, no_progress: bool):
        """Cache activations, fit the stitch, transfer the artifact, evaluate it, write a report.

        Finished stages in the run folder are reused; a stage finished with a different config is
        refused rather than overwritten.
        """
        from .pipeline import run
        from .preflight import check_names

        check_names(cfg)  # before the run folder exists or a model loads
        metrics = run(cfg, log=lambda m: click.echo(m, err=True), progress=not no_progress)
        click.echo(f"{cfg.output_dir}/report.md")
        ev = metrics.get("evaluation", {})
        for label, res in ev.items():
            rec = res.get("reconstruction", {})
            if rec:
                click.echo(f"{label}: FVU {rec.get('fvu', float('nan')):.3f} "
                           f"(excl. massive {rec.get('fvu_excl_massive', float('nan')):.3f}), L0 {rec.get('l0', 0):.1f}")
