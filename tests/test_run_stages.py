"""Run-folder stages: reuse on re-run, refusal on changed config, redo after interruption."""

import json

import pytest

from stitchplug.errors import StageError
from stitchplug.runfolder import RunFolder


def test_finished_stage_is_reused(tmp_path):
    calls = []
    rf = RunFolder(tmp_path)
    assert rf.run("cache", {"tokens": 10}, lambda: calls.append(1) or {"n": 10}, log=lambda s: None) == {"n": 10}
    assert RunFolder(tmp_path).run("cache", {"tokens": 10}, lambda: calls.append(2) or {"n": 0}, log=lambda s: None) == {"n": 10}
    assert calls == [1]


def test_changed_config_is_refused_naming_the_field(tmp_path):
    rf = RunFolder(tmp_path)
    rf.run("stitch", {"stitch": {"solver": "lstsq"}}, lambda: {}, log=lambda s: None)
    with pytest.raises(StageError, match=r"stitch\.solver \('lstsq' -> 'adam'\)"):
        rf.run("stitch", {"stitch": {"solver": "adam"}}, lambda: {}, log=lambda s: None)
    assert json.loads(rf.marker("stitch").read_text())["deps"] == {"stitch": {"solver": "lstsq"}}


def test_interrupted_stage_is_redone(tmp_path):
    rf = RunFolder(tmp_path)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rf.run("sae", {}, boom, log=lambda s: None)
    assert not rf.marker("sae").exists()
    assert rf.run("sae", {}, lambda: {"ok": True}, log=lambda s: None) == {"ok": True}


def test_missing_stage_file_is_a_one_line_error(tmp_path):
    rf = RunFolder(tmp_path)
    with pytest.raises(StageError, match="stitch.safetensors is missing"):
        rf.require("stitch", "stitch/stitch.safetensors")


def _stage(rf, name, inputs, outputs, calls, write=None, log=lambda s: None):
    def fn():
        calls.append(name)
        for path in outputs.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(write or f"{name} built from {[p.read_text() for p in inputs.values()]}")
        return {}
    return rf.run(name, {"x": 1}, fn, log=log, inputs=inputs, outputs=outputs)


def test_a_replaced_upstream_output_makes_later_stages_stale(tmp_path):
    rf, calls = RunFolder(tmp_path), []
    a, b = tmp_path / "a.txt", tmp_path / "b" / "out.txt"
    _stage(rf, "first", {}, {"a": a}, calls)
    _stage(rf, "second", {"a": a}, {"b": b}, calls)
    _stage(rf, "first", {}, {"a": a}, calls)
    _stage(rf, "second", {"a": a}, {"b": b}, calls)
    assert calls == ["first", "second"]  # unchanged: both reused
    a.write_text("replaced by hand")  # e.g. `stitch train` writing over the run's stitch
    with pytest.raises(StageError, match="was replaced after stage 'first'"):
        _stage(rf, "first", {}, {"a": a}, calls)
    assert a.read_text() == "replaced by hand"  # kept
    rf.marker("first").unlink()  # the advice: redo the stage
    _stage(rf, "first", {}, {"a": a}, calls, write="first, redone")
    logs = []
    _stage(rf, "second", {"a": a}, {"b": b}, calls, log=logs.append)
    assert any("[second] stale: its input a" in m for m in logs)
    assert calls[-1] == "second" and b.read_text() == "second built from ['first, redone']"
    b.unlink()  # a deleted output is simply rebuilt
    _stage(rf, "second", {"a": a}, {"b": b}, calls)
    assert calls[-1] == "second" and b.exists()


def test_a_redone_upstream_stage_redoes_its_consumers(tmp_path):
    rf, calls = RunFolder(tmp_path), []
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    _stage(rf, "first", {}, {"a": a}, calls, write="v1")
    _stage(rf, "second", {"a": a}, {"b": b}, calls)
    rf.marker("first").unlink()
    _stage(rf, "first", {}, {"a": a}, calls, write="v2")  # redone with a different result
    _stage(rf, "second", {"a": a}, {"b": b}, calls)
    assert calls == ["first", "second", "first", "second"] and b.read_text() == "second built from ['v2']"


def test_check_names_every_changed_stage_before_anything_runs(tmp_path):
    rf = RunFolder(tmp_path)
    for name in ("cache", "stitch", "stitch_ce"):
        rf.run(name, {"stitch": {"solver": "lstsq"}} if name != "cache" else {}, lambda: {}, log=lambda s: None)
    with pytest.raises(StageError) as err:
        rf.check({"cache": {}, "stitch": {"stitch": {"solver": "adam"}}, "stitch_ce": {"stitch": {"solver": "adam"}}})
    msg = str(err.value)
    assert "stages/stitch.json stages/stitch_ce.json" in msg and "those 2 stages" in msg and "cache.json" not in msg


def test_second_writer_is_refused_in_one_line(tmp_path):
    rf = RunFolder(tmp_path)
    with rf.writing("first writer"):
        with pytest.raises(StageError) as err:
            with RunFolder(tmp_path).writing("second"):
                pass
    assert "in use by first writer (pid" in str(err.value) and "\n" not in str(err.value)
    with RunFolder(tmp_path).writing("after"):  # released
        pass


def test_a_ctrl_c_swallowed_where_it_landed_still_stops_the_stage(tmp_path, capfd):
    """Python drops a KeyboardInterrupt raised inside a ``__del__`` or weakref callback ("Exception
    ignored in ..."); measured, 2 of 25 Ctrl-Cs during a cache build were lost that way and the run
    finished. With the CLI's handler the interrupt stays pending: it is raised before the stage's
    marker is written, so the stage is not recorded as finished, and nothing is printed for it."""
    import os
    import signal
    import time

    import pytest

    from stitchplug import interrupt

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt.reset()
    try:
        assert interrupt.install()

        class Dropped:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs here, inside __del__, where Python ignores its exception

        def stage():
            Dropped()  # collected at once: the interrupt is raised and swallowed inside __del__
            assert interrupt.pending()  # the body went on: this is the lost Ctrl-C
            return {"n": 1}

        rf = RunFolder(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            rf.run("cache", {"tokens": 10}, stage, log=lambda s: None)
        assert not rf.marker("cache").exists()
        assert "Exception ignored" not in capfd.readouterr().err
    finally:
        signal.signal(signal.SIGINT, old)
        interrupt.reset()
