"""Steering-vector transfer (paper section 4) as a plugin: artifact ``steering``, evaluators
``steering_language``, ``language_langdetect`` / ``language_lingua``, command ``stitchplug steer``.

Public API: :class:`stitchplug_steering.artifact.SteeringKind`, :class:`~.config.SteeringConfig`,
:func:`~.steering_run.run_steering`, :func:`~.vector.language_stats`, :func:`~.vector.transfer_vector`,
:func:`~.intervene.clamp_patch`, :func:`~.detect.detect_all`, :func:`~.stats.share`.
"""

from stitchplug.api import hookimpl


def _kind():
    from .artifact import SteeringKind

    return SteeringKind()


def _evaluator(name):
    def make():
        from .evaluator import LanguageShare, SteeringLanguage

        return SteeringLanguage() if name == "steering" else LanguageShare(name)

    return make


@hookimpl
def register_artifacts(register):
    register("steering", _kind,
             description="Difference-of-means language vectors, projection clamp, transferred by v @ P (no bias)",
             source="stitchplug (first party)")


@hookimpl
def register_evaluators(register):
    register("steering_language", _evaluator("steering"),
             description="share of steered generations in the target language (exact CI), fluency loss",
             source="stitchplug (first party)")
    register("language_langdetect", _evaluator("langdetect"),
             description="share of texts in a language (langdetect, seeded; the paper's detector)",
             source="pypi:langdetect")
    register("language_lingua", _evaluator("lingua"),
             description="share of texts in a language (lingua-language-detector, deterministic)",
             source="pypi:lingua-language-detector")


@hookimpl
def register_commands(cli):
    from .cli import steer_cmd
    from .fitexp_cli import add_command

    cli.add_command(steer_cmd)
    add_command(cli)
