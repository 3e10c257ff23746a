"""The evaluate stage's step over evaluators (``stitchplug.run.pipeline.evaluate_arms``): every arm of
the run reaches every evaluator, a duck-typed evaluator is judged arm by arm, and an evaluator that
answers for other arms than it was given is refused, naming it."""

from __future__ import annotations

import pytest

from stitchplug.api import Evaluator, PluginError
from stitchplug.artifacts import Arm
from stitchplug.run.pipeline import evaluate_arms


class _Length(Evaluator):
    name = "length"
    applies_to = {"fake"}

    def evaluate(self, artifact, context):
        return {"n": len(artifact), "ctx": context}


class _Duck:  # not an Evaluator: only evaluate()
    name = "duck"

    def evaluate(self, artifact, context):
        return {"first": artifact[0]}


class _Shared(Evaluator):
    """One call for all arms (what the probe's evaluator does), answering with a result per arm."""

    name = "shared"
    calls = 0

    def evaluate(self, artifact, context):  # pragma: no cover - never called: evaluate_arms is overridden
        raise AssertionError

    def evaluate_arms(self, arms, log=None):
        type(self).calls += 1
        return {label: {"upper": arm.artifact.upper()} for label, arm in arms.items()}


class _Forgetful(Evaluator):
    name = "forgetful"

    def evaluate(self, artifact, context):
        return {}

    def evaluate_arms(self, arms, log=None):
        return {label: {} for label in list(arms)[:-1]}


class _Inventive(_Forgetful):
    name = "inventive"

    def evaluate_arms(self, arms, log=None):
        return {**{label: {} for label in arms}, "bonus": {}}


class _NotADict(_Forgetful):
    name = "listy"

    def evaluate_arms(self, arms, log=None):
        return [{} for _ in arms]


ARMS = {"source": Arm("abc", "A"), "transferred": Arm("de", "B"), "random": Arm("f", "B")}


def test_every_arm_reaches_every_evaluator_and_a_duck_is_judged_arm_by_arm():
    logged = []
    out = evaluate_arms([_Length(), _Duck(), _Shared()], ARMS, logged.append)
    assert out == {
        "source": {"length": {"n": 3, "ctx": "A"}, "duck": {"first": "a"}, "shared": {"upper": "ABC"}},
        "transferred": {"length": {"n": 2, "ctx": "B"}, "duck": {"first": "d"}, "shared": {"upper": "DE"}},
        "random": {"length": {"n": 1, "ctx": "B"}, "duck": {"first": "f"}, "shared": {"upper": "F"}},
    }
    assert _Shared.calls == 1  # the shared pass is one call for all arms
    assert "  length on transferred" in logged and "  duck on random" in logged


@pytest.mark.parametrize("bad, shown", [(_Forgetful, "['source', 'transferred']"),
                                        (_Inventive, "['bonus', 'random', 'source', 'transferred']"),
                                        (_NotADict, "list")])
def test_an_evaluator_answering_for_other_arms_is_refused_by_name(bad, shown):
    with pytest.raises(PluginError) as err:
        evaluate_arms([_Length(), bad()], ARMS, lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"evaluator {bad.name!r} returned arms {shown}, not the run's "
                   "['random', 'source', 'transferred']")
