"""Hostile runs: what other processes, disks, signals and users do to a run while it runs (issue 26, round three).

- one run per output at a time: a second process is refused naming the holder; a SIGKILLed holder leaves no lock;
- full disks and read-only folders, on a small tmpfs this test mounts (root only; skipped with the reason elsewhere):
  one line naming the path and the cause, earlier files intact, and the run resumes once there is room;
- stop signals: a second SIGTERM, or a step that outlives the grace period, ends the process at once; label and eval
  stop cleanly, and labelling resumes from the prompts already judged (in the pipeline too);
- a run whose every update is non-finite stops with the non-finite error;
- no command writes over its own inputs; values bounded by the model; validation that used to come late.

The refusals are a table run in-process (`rlcf.cli.main`), as in test_hostile_inputs.py: a non-zero exit, one clear
line naming the culprit, no traceback, nothing written. The rest start real processes or mount real file systems.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import vowel_reward
from helpers.common import read_metrics, write_jsonl
from test_hostile_inputs import run_main

from rlcf.cli import main
from rlcf.files import DiskWriteError, RunLock, lock_file_for
from rlcf.label import partial_path
from rlcf.train.checkpoint import checkpoint_problem

TESTS = Path(__file__).parent
PROMPTS = ["describe the sea", "tell me about a cat", "write a note", "a rainy day", "the park", "good dog",
           "a sunny morning", "what is a mat"]


# ---------------------------------------------------------------- reward functions the runs below call

STATE = {"calls": 0, "signal_at": -1, "fill_at": -1, "fill": None, "leave": 0, "judged": []}


def reset(**kw):
    STATE.update(calls=0, signal_at=-1, fill_at=-1, fill=None, leave=0, judged=[])
    STATE.update(kw)


def scripted(prompts, responses):
    """The vowel reward, with what a test scripted: record the prompts, send this process SIGTERM on call
    `signal_at`, fill the disk (file `fill`, leaving `leave` bytes) on call `fill_at`."""
    STATE["calls"] += 1
    STATE["judged"] += list(prompts)
    if STATE["calls"] == STATE["signal_at"]:
        os.kill(os.getpid(), signal.SIGTERM)
    if STATE["calls"] == STATE["fill_at"]:
        fill_disk(STATE["fill"], STATE["leave"])
    return vowel_reward.reward(prompts, responses)


def hang_when_told(prompts, responses):
    """The vowel reward; with RLCF_TEST_HANG set (the subprocesses below), a reward server that never answers: it
    touches the file RLCF_TEST_HANG names, then sleeps for good."""
    mark = os.environ.get("RLCF_TEST_HANG")
    if mark and STATE["calls"] >= int(os.environ.get("RLCF_TEST_HANG_AFTER", "0")):
        Path(mark).touch()
        while True:
            time.sleep(0.05)
    STATE["calls"] += 1
    return vowel_reward.reward(prompts, responses)


def fill_disk(path, leave: int) -> None:
    """Fill the file system of `path` until `leave` bytes are free."""
    free = os.statvfs(os.path.dirname(path)).f_bavail * os.statvfs(os.path.dirname(path)).f_frsize
    with open(path, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
            f.flush()
        except OSError:
            pass


# ---------------------------------------------------------------- helpers

def _env():
    return {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _snapshot(*paths) -> dict:
    out = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rlcf")]
    assert lines, err
    return lines[-1]


def train_args(world, out, *extra, reward="helpers.vowel_reward:reward", steps=1):
    return ["train", "--model.name-or-path", world["model"], "--prompts", world["prompts"], "--steps", str(steps),
            "--rollout.max-new-tokens", "4", "--rollout.prompts-per-step", "4", "--optim.epochs", "1",
            "--no-progress", "--reward.function", reward, "--output-dir", str(out), *extra]


def label_args(world, out, *extra, judge="helpers.vowel_reward:reward"):
    return ["label", "--model.name-or-path", world["model"], "--prompts", world["prompts"], "--judge", judge,
            "--rollout.max-new-tokens", "6", "--rollout.prompts-per-step", "2", "--output", str(out), *extra]


def eval_args(world, out, *extra):
    return ["eval", "--model", world["model"], "--reference", world["model"], "--prompts", world["prompts"],
            "--split", "train", "--max-prompts", "4", "--rollout.max-new-tokens", "4", "--gold",
            "helpers.vowel_reward:reward", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("hostile_runs")
    prompts = write_jsonl(tmp / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    (tmp / "notes.txt").write_text("my own notes, not pairs\n")
    (tmp / "notes.json").write_text(json.dumps({"mine": 1}))
    write_jsonl(tmp / "e.samples.jsonl", [{"prompt": p} for p in PROMPTS])
    (tmp / "a-file").write_text("not a folder\n")
    (tmp / "runx").mkdir()
    write_jsonl(tmp / "runx" / "data.jsonl", [{"prompt": "p", "completion": "c"}] * 4)
    run = tmp / "nan-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "reward/mean": r, "kl/k1_seq": 0.1}) + "\n"
                                               for i, r in enumerate([0.1, float("nan"), 0.3, float("inf")], 1)))
    return {"tmp": str(tmp), "model": tiny_model_dir, "prompts": prompts, "model_name": Path(tiny_model_dir).name}


# ---------------------------------------------------------------- refused before anything is written (a table)

CASES = {
    # 5. no command writes over one of its own inputs, or over a file it did not write
    "label-output-is-its-prompts": ("label", ["--prompts", "{prompts}", "--output", "{prompts}"],
                                    ["--output is --prompts", "prompts.jsonl", "input"]),
    "eval-output-is-its-prompts": ("eval", ["--prompts", "{prompts}", "--output", "{prompts}"],
                                   ["--output is --prompts", "input"]),
    "eval-samples-would-replace-the-prompts": ("eval", ["--prompts", "{tmp}/e.samples.jsonl",
                                                        "--output", "{tmp}/e.json"],
                                               ["e.samples.jsonl", "written beside --output", "--prompts"]),
    "label-output-is-someone-elses-file": ("label", ["--output", "{tmp}/notes.txt"],
                                           ["notes.txt", "not an earlier `rlcf label` output", "another --output"]),
    "eval-output-is-someone-elses-file": ("eval", ["--output", "{tmp}/notes.json"],
                                          ["notes.json", "not an earlier `rlcf eval` output"]),
    "label-output-is-a-folder": ("label", ["--output", "{tmp}/runx"], ["runx is a folder", "file name"]),
    "train-output-dir-is-the-model": ("train", ["--model.name-or-path", "{model}", "--output-dir", "{model}"],
                                      ["--output-dir", "--model.name-or-path", "input of this run"]),
    "sft-overwrite-would-move-its-data": ("sft", ["--data.path", "{tmp}/runx/data.jsonl", "--output-dir", "{tmp}/runx",
                                                  "--overwrite"], ["--overwrite", "runx", "--data.path", "lies in it"]),
    # 6. values bounded: by the model's context once it is known, and no empty output
    "train-max-new-tokens-beyond-the-context": ("train", "TRAIN", ["--rollout.max-new-tokens=1000000000",
                                                                   "{model_name}", "256", "max_position_embeddings",
                                                                   "at most"]),
    "label-max-new-tokens-beyond-the-context": ("label", "LABEL", ["--rollout.max-new-tokens=1000000000", "256"]),
    "eval-max-new-tokens-beyond-the-context": ("eval", "EVAL", ["--rollout.max-new-tokens=1000000000", "256"]),
    "train-output-dir-empty": ("train", ["--output-dir", ""], ["--output-dir is empty"]),
    "sft-output-dir-empty": ("sft", ["--data.path", "{tmp}/runx/data.jsonl", "--output-dir", ""],
                             ["--output-dir is empty"]),
    "label-output-empty": ("label", ["--output", ""], ["--output is empty"]),
    "eval-output-empty": ("eval", ["--output", ""], ["--output is empty"]),
    "plot-output-dir-empty": ("plot", ["--runs", "{tmp}/nan-run", "--output-dir", ""], ["--output-dir is empty"]),
    "pipeline-output-dir-empty": ("pipeline", ["--output-dir", ""], ["--output-dir is empty"]),
    # 7. validation that came late
    "plot-output-dir-is-a-file": ("plot", ["--runs", "{tmp}/nan-run", "--output-dir", "{tmp}/a-file"],
                                  ["a-file is a file", "folder name"]),
    "pipeline-rm-num-layers-beyond-the-backbone": ("pipeline", ["--rm.model", "{model}", "--rm.num-layers", "99",
                                                                "--output-dir", "{out}"],
                                                   ["--rm.num-layers 99", "3 blocks", "1 to 3"]),
    "stop-grace-not-a-number": ("train", "TRAIN", ["RLCF_STOP_GRACE_S='soon'", "seconds"],
                                {"RLCF_STOP_GRACE_S": "soon"}),
}
EXTRA = {"train-max-new-tokens-beyond-the-context": ["--rollout.max-new-tokens", "1000000000"],
         "label-max-new-tokens-beyond-the-context": ["--rollout.max-new-tokens", "1000000000"],
         "eval-max-new-tokens-beyond-the-context": ["--rollout.max-new-tokens", "1000000000"]}


def test_case_table_is_large_enough():
    assert len(CASES) >= 14
    assert {c[0] for c in CASES.values()} == {"train", "sft", "label", "eval", "plot", "pipeline"}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_before_anything_is_written(case, world, capsys, tmp_path, monkeypatch):
    command, args, expected, *env = CASES[case]
    for key, value in (env[0] if env else {}).items():
        monkeypatch.setenv(key, value)
    values = dict(world, out=str(tmp_path / "out"))
    out = tmp_path / "out"
    if args == "TRAIN":
        argv = train_args(world, out) + EXTRA.get(case, [])
    elif args == "LABEL":
        argv = label_args(world, out / "pairs.jsonl") + EXTRA[case]
    elif args == "EVAL":
        argv = eval_args(world, out / "eval.json") + EXTRA[case]
    else:
        argv = [command] + [a.format(**values) for a in args]
    inputs = _snapshot(world["tmp"], world["model"])
    rc, err = run_main(argv, capsys)
    assert rc not in (0, None), f"{case}: exit {rc}\n{err}"
    line = _one_line(err)
    for part in expected:
        assert part.format(**values) in line, f"{case}: {part!r} not in {line!r}"
    assert not out.exists(), f"{case}: the output folder was written"
    assert _snapshot(world["tmp"], world["model"]) == inputs, f"{case}: an input changed"
    assert not list(Path(world["tmp"]).glob(".*.rlcf.lock")) and not list(tmp_path.glob(".*.rlcf.lock"))


# ---------------------------------------------------------------- 1. one run per output at a time

def test_a_second_train_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(world, tmp_path, capsys):
    """A real `rlcf train` holds the folder (its reward never answers); a second one is refused at once, naming
    its pid and command; once the first is SIGKILLed a new run starts and finishes."""
    out, mark = tmp_path / "run", tmp_path / "in-step"
    argv = train_args(world, out, reward="test_hostile_runs:hang_when_told")  # the same settings in both
    first = subprocess.Popen([sys.executable, "-m", "rlcf.cli", *argv],
                             env={**_env(), "RLCF_TEST_HANG": str(mark)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(mark, first)  # inside step 1: config.yaml written, the folder is the first run's
        t0 = time.monotonic()
        rc, err = run_main(argv, capsys)
        line = _one_line(err)
        assert rc == 2 and f"pid {first.pid}" in line and "in use by another run" in line and "`rlcf train" in line
        assert "started" in line and "--output-dir" in line
        assert time.monotonic() - t0 < 10  # at once: before any model loads
    finally:
        first.kill()
        first.wait()
    assert lock_file_for(out).exists()  # what SIGKILL leaves: the file, not the lock
    assert main(argv) == 0
    assert [r["step"] for r in read_metrics(out)] == [1] and (out / "final" / "model.safetensors").exists()
    assert not lock_file_for(out).exists()  # released (and removed) at the end


HOLD = """
import sys, time
from rlcf.files import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("command", ["label", "eval", "pipeline"])
def test_label_eval_and_pipeline_outputs_are_held_by_one_process(command, world, tmp_path, capsys):
    """A process holding the output (a helper that takes the lock and sleeps) makes the command refuse at once,
    naming it; after a SIGKILL of the helper the lock is free again."""
    target = {"label": tmp_path / "pairs.jsonl", "eval": tmp_path / "eval.json", "pipeline": tmp_path / "pipe"}[command]
    argv = {"label": label_args(world, target), "eval": eval_args(world, target),
            "pipeline": ["pipeline", "--output-dir", str(target)]}[command]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = run_main(argv, capsys)
        line = _one_line(err)
        assert rc == 2 and f"pid {holder.pid}" in line and str(target) in line and "in use" in line
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(target) as lock:  # a killed holder leaves no lock behind
        assert lock.held
    if command == "label":  # and the command itself runs
        assert main(argv) == 0 and target.exists() and not partial_path(target).exists()


# ---------------------------------------------------------------- 3a. a second signal, the grace period

def test_second_sigterm_and_the_grace_period_end_a_step_that_never_ends(world, tmp_path):
    """Two real `rlcf train` runs whose reward never answers in step 2 (after a checkpoint of step 1): one gets two
    SIGTERMs and ends at once; the other gets one and ends when RLCF_STOP_GRACE_S=1 is over. Both exit 143 and name
    the last checkpoint as the resume point."""
    procs = {}
    for name, grace in (("second", "60"), ("grace", "1")):
        out = tmp_path / name
        procs[name] = (out, subprocess.Popen(
            [sys.executable, "-m", "rlcf.cli", *train_args(world, out, "--save-every", "1",
                                                           reward="test_hostile_runs:hang_when_told", steps=3)],
            env={**_env(), "RLCF_TEST_HANG": str(tmp_path / f"{name}.mark"), "RLCF_TEST_HANG_AFTER": "1",
                 "RLCF_STOP_GRACE_S": grace}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        for name, (out, proc) in procs.items():
            _wait_for(tmp_path / f"{name}.mark", proc)
        _, second = procs["second"]
        _, grace = procs["grace"]
        grace.send_signal(signal.SIGTERM)
        second.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert second.poll() is None  # the first SIGTERM waits for the step
        t0 = time.monotonic()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 143 and time.monotonic() - t0 < 5
        assert grace.wait(timeout=15) == 143
    finally:
        for _, proc in procs.values():
            proc.kill()
            proc.wait()
    for name, why in (("second", "a second signal (SIGTERM)"), ("grace", "did not end within 1 s of SIGTERM")):
        out, proc = procs[name]
        err = proc.stderr.read()
        line = _one_line(err)
        assert why in line and "stopping at once" in line, err
        assert f"{out / 'checkpoints' / 'step_000001'}" in line and "resume point" in line
        assert checkpoint_problem(out / "checkpoints" / "step_000001") is None
        assert not (out / "checkpoints" / "step_000002").exists()


# ---------------------------------------------------------------- 3b, 8. label and eval stop cleanly; label resumes

def test_label_stopped_by_sigterm_resumes_with_the_same_pairs(world, tmp_path, capsys):
    full = tmp_path / "full.jsonl"
    assert main(label_args(world, full)) == 0
    out = tmp_path / "stopped.jsonl"
    reset(signal_at=2)  # SIGTERM while the 2nd batch (prompts 3-4) is judged: that batch ends, then the run stops
    assert main(label_args(world, out, judge=f"{__name__}:scripted")) == 143
    line = _one_line(capsys.readouterr().err)
    assert "stopped by SIGTERM after 4 of 8 prompts" in line and str(partial_path(out)) in line
    assert not out.exists() and partial_path(out).exists()
    reset()
    assert main(label_args(world, out, judge=f"{__name__}:scripted")) == 0
    assert "4 of 8 prompts already judged" in capsys.readouterr().out
    assert sorted(set(STATE["judged"])) == sorted(PROMPTS[4:])  # the prompts judged before were not sampled again
    assert out.read_text() == full.read_text()  # the pairs of an uninterrupted run
    assert not partial_path(out).exists()


def test_eval_stops_cleanly_on_sigterm_and_writes_nothing(world, tmp_path, capsys):
    out = tmp_path / "eval.json"
    reset(signal_at=1)
    assert main(eval_args(world, out, "--reward-function", f"{__name__}:scripted")) == 143
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rlcf eval: stopped by SIGTERM") and "nothing was written" in line
    assert not out.exists() and not out.with_suffix(".samples.jsonl").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_pipeline_stopped_in_its_label_stage_resumes_it_and_runs_the_rest(world, tmp_path, capsys):
    import yaml

    cfg = {"output_dir": str(tmp_path / "pipe"),
           "label": {"prompts": world["prompts"], "judge": f"{__name__}:scripted", "max_prompts": None,
                     "rollout": {"max_new_tokens": 6, "prompts_per_step": 2, "group_size": 2}},
           "rm": {"model": world["model"], "num_layers": None, "progress": False,
                  "data": {"eval_fraction": 0.0}, "optim": {"epochs": 1, "minibatch_prompts": 4}},
           "train": {"prompts": world["prompts"], "steps": 1, "progress": False,
                     "reward": {"gold": "helpers.vowel_reward:reward"},
                     "model": {"name_or_path": world["model"], "reference": "copy"},
                     "rollout": {"max_new_tokens": 4, "prompts_per_step": 4}, "optim": {"epochs": 1}},
           "eval": {"prompts": world["prompts"], "split": "train", "max_prompts": 2,
                    "gold": "helpers.vowel_reward:reward", "rollout": {"max_new_tokens": 4}}}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(cfg))
    reset(signal_at=2)
    assert main(["pipeline", "--config", str(config)]) == 143
    captured = capsys.readouterr()
    assert "stopped by SIGTERM after 4 of 8 prompts" in _one_line(captured.err)
    label = tmp_path / "pipe" / "label"
    assert json.loads((label / ".rlcf-stage.json").read_text())["done"] is False
    (label / ".rlcf-stage.json").write_text('{"fingerpr')  # and a stamp torn by a kill mid-write
    reset()
    assert main(["pipeline", "--config", str(config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "4 of 8 prompts already judged" in out and "reusing" not in out
    assert sorted(set(STATE["judged"])) == sorted(PROMPTS[4:])
    for stage in ("label", "rm", "train", "eval"):
        assert json.loads((tmp_path / "pipe" / stage / ".rlcf-stage.json").read_text())["done"] is True
    assert (tmp_path / "pipe" / "report" / "report.md").exists()
    # a changed setting downstream reruns exactly the stages after it
    assert main(["pipeline", "--config", str(config), "--eval.max-prompts", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 3 and "[4/5] eval ..." in out


# ---------------------------------------------------------------- 4. every update non-finite

def test_a_run_whose_every_update_is_nonfinite_stops_with_the_error(world, tmp_path, capsys, monkeypatch):
    """The reward is finite every step, so only the update guard counts: it must stop the run at its limit instead of
    ending it with exit 0 and the initial weights."""
    import rlcf.trainer as trainer

    real = trainer.get_algorithm

    def poisoned(name):
        algo = real(name)

        class NaNLoss:
            def __getattr__(self, key):
                return getattr(algo, key)

            def loss(self, batch, cfg):
                loss, m = algo.loss(batch, cfg)
                return loss * float("nan"), m

        return NaNLoss()

    monkeypatch.setattr(trainer, "get_algorithm", poisoned)
    out = tmp_path / "nan"
    rc, err = run_main(train_args(world, out, "--optim.max-nonfinite-steps", "2", steps=5), capsys)
    line = _one_line(err)
    assert rc == 2 and "2 optimiser steps in a row" in line and "--optim.max-nonfinite-steps" in line
    assert [r["optim/skipped_updates"] for r in read_metrics(out)] == [1]  # step 2's second skip stopped it
    assert not (out / "final").exists()


# ---------------------------------------------------------------- 7. plot says what it leaves out

def test_plot_reports_the_nonfinite_points_it_leaves_out(world, tmp_path, capsys):
    assert main(["plot", "--runs", f"{world['tmp']}/nan-run", "--output-dir", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "nan-run: 2 non-finite values of reward/mean (steps 2, 4) left out" in err
    assert "2 non-finite values of reward/mean (steps 2, 4)" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------- 2. full disks and read-only folders, for real

def _mount(where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=4m",) + options), "tmpfs", str(where)], check=True,
                   capture_output=True)


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs at tmp_path/disk, unmounted afterwards. Needs root and the right to mount (CI's machines, this
    sandbox); elsewhere the test is skipped with the reason. (RLIMIT_FSIZE, the unprivileged stand-in, fails with
    EFBIG, not ENOSPC, and leaves the disk's own behaviour untested.)"""
    disk = tmp_path / "disk"
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    try:
        _mount(disk)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({getattr(e, 'stderr', b'') or e!r})")
    yield disk
    _umount(disk)


def test_full_disk_during_a_checkpoint_then_a_read_only_one_then_resume(world, small_disk, capsys):
    """Step 2's checkpoint meets a full disk: one line naming the folder, ENOSPC and the space a checkpoint takes;
    step 1's checkpoint intact. With space freed but checkpoints/ made read-only (a bind mount), EROFS likewise.
    Then the same command resumes from step 1 and finishes."""
    out, filler = small_disk / "run", small_disk / "filler"
    reset(fill_at=2, fill=str(filler), leave=64 << 10)  # during step 2: 64 KB left, a checkpoint takes ~480 KB
    argv = train_args(world, out, "--save-every", "1", reward=f"{__name__}:scripted", steps=2)
    rc, err = run_main(argv, capsys)
    line = _one_line(err)
    assert rc == 2 and "DiskWriteError" in line and "step_000002" in line and "no space left on device (ENOSPC)" in line
    assert "free there" in line and "needed" in line
    assert "earlier checkpoints" in line and "resumes" in line
    assert checkpoint_problem(out / "checkpoints" / "step_000001") is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]  # no half folder left
    filler.unlink()
    ckpts = out / "checkpoints"
    subprocess.run(["mount", "--bind", "-o", "ro", str(ckpts), str(ckpts)], check=True)
    try:
        reset()
        rc, err = run_main(argv, capsys)
        line = _one_line(err)
        assert rc == 2 and "read-only (EROFS)" in line and "step_000002" in line
    finally:
        _umount(ckpts)
    assert checkpoint_problem(out / "checkpoints" / "step_000001") is None
    reset()
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out)] == [1, 2] and (out / "final" / "model.safetensors").exists()


def test_full_disk_while_labelling_then_resume(world, small_disk, capsys):
    out, filler = small_disk / "pairs.jsonl", small_disk / "filler"
    reset(fill_at=2, fill=str(filler), leave=0)
    rc, err = run_main(label_args(world, out, judge=f"{__name__}:scripted"), capsys)
    line = _one_line(err)
    # the batch that met the full disk: the partial file (or, when its last page still had room, the pairs file)
    assert rc == 2 and f"cannot write {out}" in line and "ENOSPC" in line and "resumes" in line
    assert not out.exists()
    filler.unlink()
    reset()
    assert main(label_args(world, out, judge=f"{__name__}:scripted")) == 0
    done = int(re.search(r"(\d) of 8 prompts already judged", capsys.readouterr().out).group(1))
    assert done >= 2 and sorted(set(STATE["judged"])) == sorted(PROMPTS[done:])
    assert len(out.read_text().splitlines()) > 0 and not partial_path(out).exists()


def test_full_disk_while_writing_the_eval_report(world, small_disk, capsys):
    out, filler = small_disk / "eval.json", small_disk / "filler"
    reset(fill_at=1, fill=str(filler), leave=0)
    rc, err = run_main(eval_args(world, out, "--reward-function", f"{__name__}:scripted"), capsys)
    line = _one_line(err)
    assert rc == 2 and "eval.samples.jsonl" in line and "ENOSPC" in line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no half file, no temporary file


def test_full_disk_metrics_line_final_folder_and_report_leave_the_earlier_versions_whole(small_disk):
    """The writers behind metrics.jsonl (an append), final/ (a folder) and the reports (a file), on a full disk: a
    DiskWriteError naming the path and ENOSPC; no torn line, the earlier final/ and report as they were, no
    temporary left."""
    from types import SimpleNamespace

    from rlcf.files import atomic_dir, atomic_write
    from rlcf.train.metrics_log import MetricsLog

    log = MetricsLog(small_disk, SimpleNamespace(is_main_process=True, log_with=None), 0, "t")
    log.write({"step": 1, "loss": 1.0})
    with atomic_dir(small_disk / "final") as tmp:
        (tmp / "model.bin").write_bytes(b"old")
    atomic_write(small_disk / "report.md", "old report")
    before = _snapshot(small_disk)
    fill_disk(str(small_disk / "filler"), 0)
    with pytest.raises(DiskWriteError, match=r"metrics.jsonl: no space left on device \(ENOSPC\).*no line is torn"):
        log.write({"step": 2, "blob": "x" * 20000})  # more than the page the first line sits in
    with pytest.raises(DiskWriteError, match=r"final: no space left on device .*needed"):
        with atomic_dir(small_disk / "final", needed=1 << 20) as tmp:
            (tmp / "model.bin").write_bytes(b"new" * 100000)
    with pytest.raises(DiskWriteError, match=r"report.md: no space left on device"):
        atomic_write(small_disk / "report.md", "new report " * 1000)
    (small_disk / "filler").unlink()
    assert _snapshot(small_disk) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["final", "metrics.jsonl", "report.md"]


@pytest.mark.parametrize("command", ["train", "label", "eval", "plot"])
def test_read_only_output_is_one_line_naming_it(command, world, small_disk, capsys):
    _umount(small_disk)
    _mount(small_disk, "ro")
    target = small_disk / "out"
    argv = {"train": train_args(world, target), "label": label_args(world, target / "pairs.jsonl"),
            "eval": eval_args(world, target / "eval.json"),
            "plot": ["plot", "--runs", f"{world['tmp']}/nan-run", "--output-dir", str(target)]}[command]
    t0 = time.monotonic()
    rc, err = run_main(argv, capsys)
    line = _one_line(err)
    assert rc == 2 and "read-only (EROFS)" in line and str(small_disk) in line
    assert command == "plot" or time.monotonic() - t0 < 10  # before any model loads
    with pytest.raises(DiskWriteError) as e:
        RunLock(target).acquire()
    assert e.value.errno == errno.EROFS


def test_an_output_folder_in_a_read_only_parent_is_locked_inside_itself(small_disk, capsys):
    """The lock file goes beside the output; where the parent cannot be written but the folder can (a writable
    mount inside a read-only one), it goes inside the folder, and a second claim is still refused."""
    out = small_disk / "out"
    out.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    _mount(out)
    try:
        with RunLock(out) as lock:
            assert lock.path == out / ".rlcf.lock" and lock.path.exists()
            second = subprocess.run([sys.executable, "-c", "import sys; from rlcf.files import RunLock\n"
                                     "try:\n    RunLock(sys.argv[1]).acquire()\nexcept ValueError as e:\n    print(e)",
                                     str(out)], env=_env(), capture_output=True, text=True)
            assert f"in use by another run: pid {os.getpid()}" in second.stdout
        assert not (out / ".rlcf.lock").exists()
    finally:
        _umount(out)
