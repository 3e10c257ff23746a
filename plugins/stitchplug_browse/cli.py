"""``stitchplug browse`` and ``stitchplug browse-export``."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    from .runner import DEFAULTS

    @cli.command("browse")
    @click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
                  help="A finished `stitchplug run --artifact sae` folder.")
    @click.option("--docs", default=DEFAULTS["docs"], show_default=True, type=int,
                  help="Held-out documents (after the cached slice) streamed through each model.")
    @click.option("--top-k", default=DEFAULTS["top_k"], show_default=True, type=int,
                  help="Top-activating contexts kept per latent and model.")
    @click.option("--window", default=DEFAULTS["window"], show_default=True, type=int,
                  help="Tokens per context (the maximum sits three quarters in).")
    @click.option("--chunk", default=DEFAULTS["chunk"], show_default=True, type=int,
                  help="Documents merged into the running top-k at once.")
    @click.option("--checkpoint", default=DEFAULTS["checkpoint"], show_default=True, type=int,
                  help="Save the pass state every this many documents (a re-run after a kill resumes there).")
    @click.option("--no-progress", is_flag=True, help="Hide progress bars.")
    def browse_cmd(run_dir, docs, top_k, window, chunk, checkpoint, no_progress):
        """A static, offline feature browser of the source SAE on A and the transferred SAE on B, side
        by side, written to RUN/browse/ (open RUN/browse/index.html); its data in RUN/browse/data/."""
        from .runner import browse

        s = browse(run_dir, docs=docs, top_k=top_k, window=window, chunk=chunk, checkpoint=checkpoint,
                   log=lambda m: click.echo(m, err=True), progress=not no_progress)
        click.echo(s["index"])

    @cli.command("browse-export")
    @click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
                  help="A run folder on which `stitchplug browse` finished.")
    @click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
                  help="Export folder (default RUN/browse/neuronpedia).")
    @click.option("--set-name", default="stitchplug", show_default=True,
                  help="Neuronpedia source-set id (the source id is '<layer>-<set-name>').")
    @click.option("--creator", default="stitchplug", show_default=True, help="Creator name in the release rows.")
    def export_cmd(run_dir, out_dir, set_name, creator):
        """The Neuronpedia bulk-import layout (model/source jsonl, features/ and activations/ batches)
        of the source SAE (on A) and the transferred SAE (on B), from the browser's data."""
        from .export import export

        for path in export(run_dir, out_dir, set_name=set_name, creator=creator):
            click.echo(path)
