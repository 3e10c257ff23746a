"""``stitchplug run``: the whole pipeline on one command."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    from ..cli import config_options
    from ..config import artifact_sections, run_config_class

    sections, presets = artifact_sections()  # every registered kind's config: --sae-width, --probe-k ...
    RunConfigWithKinds = run_config_class(sections)

    @cli.command("run")
    @config_options(RunConfigWithKinds, section_presets=presets)
    @click.option("--no-progress", is_flag=True, help="Hide progress bars.")
    def run_cmd(cfg, no_progress: bool):
        """Cache activations, fit the stitch, transfer the artifact, evaluate it, write a report.

        The artifact kind's own settings are its section (`--artifact sae` reads `sae:` and the
        `--sae-*` flags). Finished stages in the run folder are reused; a stage finished with a
        different config is refused rather than overwritten. Under `torchrun --nproc-per-node N` the
        cache, the stitch and a data-parallel artifact (the SAE) are built by all N ranks; rank 0 writes
        the run folder and finishes the run alone (docs/scale.md).
        """
        from .. import dist
        from .pipeline import Pipeline
        from ..progress import quiet_loaders
        from .preflight import check_names

        quiet_loaders(not no_progress)
        check_names(cfg)  # before the run folder exists or a model loads (every rank: the same verdict)
        rank, _ = dist.init_from_env(cfg.device)  # under torchrun: see the pipeline's module docstring
        pipeline = Pipeline(cfg, log=lambda m: click.echo(m, err=True), progress=not no_progress)
        try:
            metrics = pipeline.run()
        finally:
            dist.shutdown()
        if rank != 0:
            return
        click.echo(f"{cfg.output_dir}/report.md")
        for line in pipeline.kind.summary(metrics.get(cfg.artifact, {})):
            click.echo(line)
