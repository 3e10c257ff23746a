"""``stitchplug analyze``: the feature analysis of a finished run folder."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    from .runner import BUDGETS, PARTS

    @cli.command("analyze")
    @click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
                  help="A finished `stitchplug run` folder (SAE artifact).")
    @click.option("--what", default=",".join(PARTS), show_default=True,
                  help="Comma-separated parts: " + ", ".join(PARTS) + ".")
    @click.option("--budget", type=click.Choice(sorted(BUDGETS)), default="quick", show_default=True,
                  help="Scale of every part (quick: minutes on 2 cores for the default pair).")
    @click.option("--no-progress", is_flag=True, help="Hide progress bars.")
    def analyze_cmd(run_dir: str, what: str, budget: str, no_progress: bool):
        """Which SAE latents survive the stitch: transferability (Eq. 10), semantic vs structural,
        entropy and attention-deactivation features. Adds the `feature_analysis` section (tables,
        plots) to the run's report.md and metrics.json."""
        from .runner import analyze, parse_what

        from stitchplug.api import progress_quiet_loaders

        progress_quiet_loaders(not no_progress)
        parse_what(what)  # bad part names fail before any model loads
        analyze(run_dir, what, budget, log=lambda m: click.echo(m, err=True), progress=not no_progress)
        click.echo(f"{run_dir}/report.md")
