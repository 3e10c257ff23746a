"""A third-party plugin: one model alias, one corpus, one evaluator and one command."""

import click

from stitchplug.hookspecs import hookimpl


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


@hookimpl
def register_commands(cli):
    @cli.command(name="example-hello")
    def hello():
        """Say hello (proves plugin commands are wired in)."""
        click.echo("hello from stitchplug-example")


@hookimpl
def register_models(register):
    def factory(device="cpu", dtype="float32", cache_dir=None, **kwargs):
        from stitchplug.adapter import load_model

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
    class Nothing:
        name = "example-nothing"

    register("example-nothing", Nothing, description="an artifact kind that does nothing")
