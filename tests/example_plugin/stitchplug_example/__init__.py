"""A third-party plugin: a model alias, a corpus, an aligner, a command, and a real artifact kind
(a difference-of-means direction, :mod:`stitchplug_example.diffmean`) with its own config section and
evaluator, and a kind that builds on the ``sae`` kind (:mod:`stitchplug_example.saelatent`). It imports stitchplug only through ``stitchplug.api``."""

import click

from stitchplug.api import hookimpl


@hookimpl
def register_corpora(register):
    def factory(**kwargs):
        return [{"text": "Hello from a plugin.", "doc_id": 0}]

    register("example-corpus", factory, description="one sentence", source="stitchplug-example")


@hookimpl
def register_evaluators(register):
    class Count:
        name = "example-count"
        applies_to = {"sae", "probe", "steering"}

        def evaluate(self, artifact, context):
            return {"example_count": 1}

    register("example-count", Count, description="counts to one")

    def separation():
        from .diffmean import Separation

        return Separation()

    register("diffmean-separation", separation, description="AUROC of the direction on held-out documents")

    def agreement():
        from .saelatent import Agreement

        return Agreement()

    register("saelatent-agreement", agreement, description="cosine of a latent direction to its SAE's decoder row")


@hookimpl
def register_commands(cli):
    @cli.command(name="example-hello")
    def hello():
        """Say hello (proves plugin commands are wired in)."""
        click.echo("hello from stitchplug-example")


@hookimpl
def register_models(register):
    def factory(device="cpu", dtype="float32", cache_dir=None, **kwargs):
        from stitchplug.api import load_model

        return load_model("tiny-llama-a", device=device, dtype=dtype, cache_dir=cache_dir)

    register("example-tiny", factory, description="alias of tiny-llama-a", source="stitchplug-example")


@hookimpl
def register_aligners(register):
    def factory():
        def align(ends_a, ends_b):
            n = min(len(ends_a), len(ends_b))
            return list(range(n)), list(range(n))

        return align

    register("example-positional", factory, description="pairs tokens by position")


@hookimpl
def register_artifacts(register):
    def diffmean():
        from .diffmean import DiffMean

        return DiffMean()

    register("diffmean", diffmean, description="difference-of-means direction between labelled documents")

    def saelatent():
        from .saelatent import SaeLatent

        return SaeLatent()

    register("saelatent", saelatent, description="decoder direction of the source SAE's most frequent latent "
             "(builds on the sae kind)")
