"""Issue 25 on the real pair: every sparse arm of a probe run within 0.01 of the plain reference
(tests/probe_reference.py), per task and k.

``STITCHPLUG_PROBE_RUN=<folder>``: check a finished probe run (e.g. the quick folder after
``stitchplug run --artifact probe --preset quick --probe-tasks sae-probes:draw:30:0 ...``);
``STITCHPLUG_PROBE_REF_TASKS=N`` checks its first N tasks only (the reference recomputes every
feature one text at a time: about as long as the run's feature pass). Without the variable, the test
copies the session's quick SAE run (conftest ``quick_sae_run``) and runs the probe on two drawn tasks
(80 examples each) in the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _cli(*args, timeout=7200):
    res = subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory, request):
    given = os.environ.get("STITCHPLUG_PROBE_RUN")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("probe_slow") / "run"
    shutil.copytree(request.getfixturevalue("quick_sae_run"), out)
    _cli("run", "--artifact", "probe", "--preset", "quick", "--output-dir", str(out), "--no-progress",
         "--probe-tasks", "sae-probes:draw:2:0", "--probe-max-examples", "80")
    return out


def test_real_sparse_arms_agree_with_the_reference(probe_folder):
    from probe_reference import reference_on_folder

    m = json.loads((probe_folder / "metrics.json").read_text())["probe"]
    res = m["aggregate"] | m["diagnostics"]
    n = int(os.environ.get("STITCHPLUG_PROBE_REF_TASKS", "0")) or None
    names = res["settings"]["tasks"][:n]
    ref = reference_on_folder(probe_folder, tasks=names)
    worst = []
    for task, arms in ref.items():
        for arm, by_k in arms.items():
            for k, acc in by_k.items():
                got = res["tasks"][task]["sparse"][arm][k]["accuracy"]
                worst.append((abs(got - acc), task, arm, k, got, acc))
    worst.sort(reverse=True)
    print("largest differences (|diff|, task, arm, k, project, reference):", worst[:5])
    assert worst and worst[0][0] <= 0.01, worst[:5]
