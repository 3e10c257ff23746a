"""The reliability classes of issue 28, each with the reproduction that found it, on tiny models:

- every file a stage reads is in its fingerprint; analyze / experiment init results are stages;
- RunFolder never rewrites a file it cannot read;
- lengths are checked against the models' context size (n_ctx) before anything is written;
- inputs (prompt and task files) are checked at the start of the run;
- every save's full-disk error is one line and leaves no .tmp;
- every command that writes into (or reads) a run folder takes RUN/.lock;
- progress on a non-terminal stderr is plain lines.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from stitchplug.cli import main

TINY_PAIR = ["--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3"]
TINY = [*TINY_PAIR, "--cache-tokens", "3000", "--cache-context-size", "64", "--stitch-svcca-tokens", "500",
        "--sae-width", "64", "--sae-k", "4", "--sae-train-tokens", "4000", "--sae-batch-size", "256",
        "--eval-docs", "4", "--eval-max-windows", "4", "--no-progress"]


def cli(capsys, *args) -> tuple[int, list[str], str]:
    """Run the CLI in-process: exit code, the ``Error:`` lines, and all of stderr."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [ln for ln in err.splitlines() if ln.startswith("Error")], err


def checksums(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A finished tiny SAE run with a smoke feature analysis in it."""
    out = tmp_path_factory.mktemp("rel") / "run"
    for args in (["run", "--output-dir", str(out), *TINY], ["analyze", "--run", str(out), "--budget", "smoke",
                                                                 "--what", "transferability", "--no-progress"]):
        try:
            main(args)
        except SystemExit as exc:
            assert not exc.code, args
    return out


def copy_of(src: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# -- RunFolder never rewrites a file it cannot read ------------------------------------------------
@pytest.mark.parametrize("which", ["metrics.json", "stages/stitch.json", "report/index.json", "config.yaml"])
def test_an_unreadable_file_is_refused_and_kept(analysed, tmp_path, capsys, which):
    """Reproduction: one trailing comma in metrics.json, then `run` restarted it from {} and the
    feature_analysis and probe sections were gone."""
    run = copy_of(analysed, tmp_path, "broken")
    target = run / which
    target.write_text(target.read_text().rstrip().rstrip("}").rstrip() + ",\n}" if which.endswith(".json")
                      else "models: [unclosed\n")
    before = checksums(run)
    code, errors, err = cli(capsys, "run", "--output-dir", str(run), *TINY)
    assert code == 1 and len(errors) == 1, err
    assert which.split("/")[-1] in errors[0] and ("repair" in errors[0] or "restore" in errors[0]
                                                  or "delete" in errors[0])
    assert checksums(run) == before  # nothing rewritten, nothing lost
    if which == "metrics.json":
        code, errors, _ = cli(capsys, "analyze", "--run", str(run), "--budget", "smoke", "--what", "transferability")
        assert code == 1 and len(errors) == 1 and "metrics.json" in errors[0]
        assert checksums(run) == before


# -- analyze results are a stage: a run that redoes their inputs removes them -----------------------
def test_analyze_after_a_width_change_leaves_no_stale_report(analysed, tmp_path, capsys):
    """Reproduction: SAE width changed, the four markers the refusal named deleted, run again: the
    report still described the old SAE's 64 latents."""
    run = copy_of(analysed, tmp_path, "width")
    assert "feature_analysis" in json.loads((run / "metrics.json").read_text())
    assert (run / "stages" / "feature_analysis.json").exists()
    i = TINY.index("--sae-width") + 1
    wider = [*TINY[:i], "32", *TINY[i + 1:]]
    code, errors, _ = cli(capsys, "run", "--output-dir", str(run), *wider)
    assert code == 1 and len(errors) == 1 and "sae.width" in errors[0]
    for rel in errors[0].split("delete ", 1)[1].split(" in it")[0].split():
        (run / rel).unlink()  # follow the advice
    code, errors, err = cli(capsys, "run", "--output-dir", str(run), *wider)
    assert code == 0, err
    assert "[feature_analysis] stale" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert "feature_analysis" not in metrics and "Feature analysis" not in (run / "report.md").read_text()
    assert not (run / "stages" / "feature_analysis.json").exists()
    code, _, err = cli(capsys, "analyze", "--run", str(run), "--budget", "smoke", "--what", "transferability",
                       "--no-progress")
    assert code == 0, err
    t = json.loads((run / "metrics.json").read_text())["feature_analysis"]["transferability"]
    assert t["n_live"] + t["n_dead"] == 32  # recomputed on the new SAE


# -- one writer per folder ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["analyze", "--run", "{run}", "--budget", "smoke"],
    ["experiment", "init", "--run", "{run}", "--steps", "2"],
    ["steer", "--run", "{run}", "--model", "A", "--prompt", "hello"],
], ids=lambda c: c[0] if c[0] != "experiment" else "experiment init")
def test_commands_that_write_into_a_run_folder_take_its_lock(analysed, tmp_path, capsys, command):
    from stitchplug.api import lock_run_folder

    run = copy_of(analysed, tmp_path, "locked")
    before = checksums(run)
    with lock_run_folder(run, "a test holding the lock"):
        code, errors, err = cli(capsys, *[a.replace("{run}", str(run)) for a in command])
    assert code == 1 and len(errors) == 1 and "in use by a test holding the lock" in errors[0], err
    assert checksums(run) == before


# -- lengths against the models' context size, before anything is written ---------------------------
@pytest.mark.parametrize("flags,field", [
    (["--cache-context-size", "300"], "cache.context_size"),
    (["--artifact", "probe", "--probe-context-size", "300"], "probe.context_size"),
    (["--artifact", "steering", "--steering-max-new-tokens", "400"], "steering.max_new_tokens"),
], ids=["cache", "probe", "steering"])
def test_a_length_beyond_n_ctx_is_refused_before_the_folder_exists(flags, field, tmp_path, capsys):
    """Reproduction: --cache-context-size beyond n_ctx ended in `RuntimeError: The size of tensor a
    (429) must match ... (256)`; tiny models read 256 positions."""
    out = tmp_path / "run"
    code, errors, err = cli(capsys, "run", "--output-dir", str(out), *TINY_PAIR, *flags)
    assert code == 2 and len(errors) == 1 and field in errors[0] and "n_ctx = 256" in errors[0], err
    assert not out.exists()


def test_the_adapter_refuses_a_sequence_beyond_n_ctx_in_one_line():
    import torch

    from stitchplug.adapter import load_model
    from stitchplug.errors import StageError

    a = load_model("tiny-llama-a")
    with pytest.raises(StageError, match="n_ctx = 256"):
        a.generate("hello there", max_new_tokens=300)  # steer --max-new-tokens
    with pytest.raises(StageError, match="n_ctx = 256"):
        a.capture(torch.zeros(1, 300, dtype=torch.long), [0])


@pytest.mark.parametrize("args,says", [
    (["steer", "--run", "x", "--model", "A", "--prompt", "p", "--seed", "-1"], "--seed"),
    (["steer", "--run", "x", "--model", "A", "--prompt", "p", "--z-scale", "inf"], "--z-scale"),
    (["experiment", "init", "--run", "x", "--seed", "-1"], "seed"),
    (["experiment", "init", "--run", "x", "--lr", "inf"], "lr"),
    (["run", "--sae-lr", "inf"], "sae.lr"),
    (["run", "--seed", "-1"], "seed"),
])
def test_seed_and_non_finite_values_of_other_commands(args, says, tmp_path, capsys, monkeypatch):
    """Reproduction: `--sae-lr inf` trained to NaN weights and exited 0; `--seed -1` was a numpy traceback."""
    monkeypatch.chdir(tmp_path)
    code, errors, err = cli(capsys, *args)
    assert code == 2 and len(errors) == 1 and says in errors[0], err
    assert list(tmp_path.iterdir()) == []


# -- inputs checked at the start of the run ----------------------------------------------------------
@pytest.mark.parametrize("content,says", [(b"", "is empty"), (b"\x00\x01\x02binary", "not text"),
                                          (None, "does not exist")], ids=["empty", "binary", "missing"])
def test_a_bad_prompt_file_is_refused_before_the_folder_exists(content, says, tmp_path, capsys):
    """Reproduction: a missing, empty or binary --steering-prompts file was caught at the evaluate stage,
    after three markers recorded the bad path."""
    prompts = tmp_path / "prompts.txt"
    if content is not None:
        prompts.write_bytes(content)
    out = tmp_path / "run"
    code, errors, err = cli(capsys, "run", "--output-dir", str(out), *TINY_PAIR, "--artifact", "steering",
                            "--steering-prompts", f"file:{prompts}")
    assert code == 1 and len(errors) == 1 and says in errors[0] and str(prompts) in errors[0], err
    assert not out.exists()


@pytest.mark.parametrize("content,says", [("text,label\na,1\nb,1\nc,1\n", "class"),
                                          ("words,label\na,1\nb,0\n", "no a text column")],
                         ids=["one class", "no text column"])
def test_a_bad_task_file_is_refused_before_the_folder_exists(content, says, tmp_path, capsys):
    task = tmp_path / "task.csv"
    task.write_text(content)
    out = tmp_path / "run"
    code, errors, err = cli(capsys, "run", "--output-dir", str(out), *TINY_PAIR, "--artifact", "probe",
                            "--probe-tasks", f"file:{task}", "--probe-max-examples", "20")
    assert code == 1 and len(errors) == 1 and says in errors[0], err
    assert not out.exists()


# -- a full disk while saving: one line, no .tmp left ------------------------------------------------
def test_a_full_disk_while_saving_a_stitch_is_one_oserror_and_no_tmp(tmp_path, monkeypatch):
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from stitchplug.stitch.model import Stitch

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as exc:
        Stitch(8, 12, seed=0).save(tmp_path / "stitch" / "stitch.safetensors")
    assert exc.value.errno == errno.ENOSPC and str(exc.value.filename).endswith("stitch.safetensors")
    assert [p.name for p in (tmp_path / "stitch").iterdir()] == []


@pytest.mark.parametrize("raised,says", [
    ("safetensors", "No space left on device"),
    ("h5py", "No space left on device"),
    ("torch", "Input/output error"),
])
def test_any_librarys_disk_error_is_one_line(raised, says, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import stitchplug.run.preflight as preflight

    exc = {"safetensors": SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
           "h5py": OSError("Can't write data (file write failed: time = x, filename = 'a.h5', errno = 28, "
                           "error message = 'No space left on device')"),
           "torch": RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed "
                                 "writing file data/0: file write failed")}[raised]

    def fail(cfg):
        raise exc

    monkeypatch.setattr(preflight, "check_names", fail)
    code, errors, err = cli(capsys, "run", "--output-dir", str(tmp_path / "run"), *TINY_PAIR)
    assert code == 1 and len(errors) == 1 and says in errors[0], err


def test_atomic_writer_removes_its_tmp_on_failure(tmp_path, monkeypatch):
    from stitchplug.atomic import write_text_atomic

    target = tmp_path / "metrics.json"
    target.write_text("{}")

    def boom(self, *a, **k):
        Path.write_bytes(self, b"{half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError):
        write_text_atomic(target, '{"a": 1}')
    monkeypatch.undo()
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# -- logs: plain progress lines when stderr is not a terminal ----------------------------------------
def test_every_progress_bar_goes_through_the_one_helper():
    """A bare tqdm bar writes carriage returns into a redirected log (found in `browse`): every module of
    the core and the first-party plugins reports progress through stitchplug.progress instead."""
    import re

    root = Path(__file__).resolve().parents[1]
    direct = re.compile(r"^\s*(from tqdm|import tqdm)", re.M)
    offenders = [str(p.relative_to(root)) for base in ("stitchplug", "plugins") for p in (root / base).rglob("*.py")
                 if p.name != "progress.py" and direct.search(p.read_text())]
    assert offenders == []


def test_a_cache_run_redirected_to_a_file_writes_plain_progress_lines(tmp_path):
    import os
    import subprocess
    import sys

    log = tmp_path / "cache.log"
    env = {**os.environ, "STITCHPLUG_PROGRESS_EVERY": "0"}
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, "-m", "stitchplug.cli", "cache", *TINY_PAIR, "--output-dir",
                              str(tmp_path / "run"), "--cache-tokens", "600", "--cache-context-size", "64",
                              "--stitch-source-layer", "1", "--stitch-target-layer", "1"],
                             stdout=subprocess.DEVNULL, stderr=fh, env=env, timeout=900)
    text = log.read_text()
    assert res.returncode == 0, text[-2000:]
    assert "\r" not in text and "\x1b" not in text  # no carriage-return bar states, no terminal codes
    lines = [ln for ln in text.splitlines() if ln.startswith("[cache] ")]
    assert len(lines) >= 2 and all(" tok" in ln and "tok/s" in ln for ln in lines), text[-2000:]
    assert "(100%)" in lines[-1]


def test_quiet_loaders_silence_the_gguf_loaders_bare_bar(tmp_path):
    """The embedded models load through transformers' GGUF de-quantisation, whose bare tqdm bar ignores
    transformers' and huggingface_hub's switches and wrote carriage returns into every redirected run log."""
    import subprocess
    import sys

    code = ("from stitchplug.progress import quiet_loaders\n"
            "quiet_loaders(False)\n"
            "from transformers.modeling_gguf_pytorch_utils import tqdm\n"
            "for _ in tqdm(range(50), desc='Converting and de-quantizing GGUF tensors...', mininterval=0): pass\n")
    log = tmp_path / "load.log"
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=fh, timeout=300)
    text = log.read_text()
    assert res.returncode == 0, text[-2000:]
    assert "GGUF" not in text and "\r" not in text, text[-500:]


def test_line_progress_reports_done_total_rate_and_eta(capsys):
    from stitchplug.progress import progress

    bar = progress(total=10, desc="stage", unit="step", every=0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()  # pytest's captured stderr is not a terminal
    assert len(lines) == 5 and lines[0].startswith("[stage] 1/10 step (10%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("[stage] 4/10 step (40%)")
    quiet = progress(total=3, desc="x", enabled=False)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().err == ""
