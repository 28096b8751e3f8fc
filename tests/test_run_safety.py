"""One run per directory and clean signals, in real processes: a second run on a busy --out is refused and
the first ends as if alone; ``rlready study`` forwards SIGTERM to its stages and ends with them, and its
stages die with it when it is killed; --overwrite from inside a run directory touches nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lm_runs import SMALL, venv_script, wait_for
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def stage_args(env: Path, **extra: str) -> list[str]:
    items = {**SMALL, "data.tokenizer": str(env / "tok"), **extra}
    return [arg for key, value in items.items() for arg in (f"--{key}", value)]


def proc_env(env: Path) -> dict[str, str]:
    return dict(os.environ, RLREADY_CACHE=str(env / "cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is itself gone) is not running.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"


def lock_holder(out: Path) -> int | None:
    text = (out / ".rlready.lock").read_text().strip() if (out / ".rlready.lock").is_file() else ""
    return int(text) if text.isdigit() else None


def test_a_second_run_on_a_busy_directory_is_refused_and_the_first_ends_as_if_alone(env, tmp_path):
    rlready = venv_script("rlready")
    args = stage_args(env, **{"train.max_steps": "8"})
    out = tmp_path / "busy"
    first = subprocess.Popen([rlready, "pretrain", "--out", str(out), *args], env=proc_env(env))
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file(), 300, "the first run to train")
        first.send_signal(signal.SIGSTOP)  # holds the lock, mid-run, for as long as the second one needs
        second = subprocess.run(
            [rlready, "pretrain", "--out", str(out), *args],
            env=proc_env(env),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"rlready: error: --out {str(out)!r} is in use by another rlready process (pid {first.pid}); "
        "wait for it to end or use another directory"
    ]
    assert first.wait(timeout=300) == 0
    alone = tmp_path / "alone"
    subprocess.run(
        [rlready, "pretrain", "--out", str(alone), *args], env=proc_env(env), check=True, timeout=300
    )
    a, b = load_file(out / "final" / "model.safetensors"), load_file(alone / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overwrite_of_the_current_directory_touches_nothing(env, tmp_path):
    rlready = venv_script("rlready")
    run = tmp_path / "run"
    subprocess.run(
        [rlready, "pretrain", "--out", str(run), *stage_args(env, **{"train.max_steps": "2"})],
        env=proc_env(env),
        check=True,
        timeout=300,
    )
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    other = stage_args(env, **{"train.max_steps": "2", "loss.beta": "0.5"})
    proc = subprocess.run(
        [rlready, "pretrain", "--out", ".", "--overwrite", *other],
        cwd=run,
        env=proc_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rlready: error: --overwrite refused: --out '.' is the current directory or one of its parents"
    ]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def _start_study(env: Path, out: Path, configs: Path) -> subprocess.Popen:
    args = stage_args(env, **{"train.max_steps": "100000", "train.checkpoint_every": "100000"})
    return subprocess.Popen(
        [venv_script("rlready"), "study", "--out", str(out), "--configs", str(configs), "--jobs", "1", *args],
        env=proc_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _end(study: subprocess.Popen, stage: Path) -> None:
    """Whatever a failed assertion left running: the study and its stage."""
    for pid in (study.pid, lock_holder(stage)):
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
    study.wait()


def test_study_forwards_sigterm_to_its_stage_and_its_stage_dies_with_it(env, tmp_path):
    configs = tmp_path / "configs.yaml"
    configs.write_text("- {name: CE}\n")
    out = tmp_path / "study"
    stage = out / "runs" / "CE-s0" / "pretrain"
    log = stage.parent / "pretrain.log"

    study = _start_study(env, out, configs)
    try:
        wait_for(lambda: (stage / "metrics.jsonl").is_file(), 300, "the stage to train")
        pid = lock_holder(stage)
        assert pid is not None and alive(pid)
        study.send_signal(signal.SIGTERM)
        _, err = study.communicate(timeout=300)
    finally:
        _end(study, stage)
    assert study.returncode == 3, err
    assert err.strip().splitlines()[-1] == (
        "rlready: study interrupted by SIGTERM; its running stages checkpointed; run the same command to resume"
    )
    assert not alive(pid)
    assert [p.name for p in (stage / "checkpoints").iterdir() if p.name.startswith("step_")]
    assert "interrupted at step" in log.read_text()

    # The same command resumes; killed outright, the study takes its stage with it (the kernel's
    # parent-death signal), so no stage runs on unowned and a re-run never finds two copies of one.
    study = _start_study(env, out, configs)
    try:
        wait_for(lambda: lock_holder(stage) not in (None, pid), 300, "the resumed stage")
        pid = lock_holder(stage)
        wait_for(lambda: "resuming from" in log.read_text(), 300, "the stage to resume")
        study.send_signal(signal.SIGKILL)
        study.communicate(timeout=60)
        wait_for(lambda: not alive(pid), 120, "the orphaned stage to end")
    finally:
        _end(study, stage)
    assert "interrupted" in log.read_text().splitlines()[-1]


@pytest.mark.parametrize("delay", [0.0, 1.0, 2.5])  # model set-up, reward workers starting, first evaluation
def test_sigterm_during_rl_start_up_or_its_first_evaluation_exits_3_with_the_message(env, tmp_path, delay):
    rlready = venv_script("rlready")
    pre = tmp_path / "pre"
    subprocess.run(
        [rlready, "pretrain", "--out", str(pre), *stage_args(env, **{"train.max_steps": "2"})],
        env=proc_env(env),
        check=True,
        timeout=300,
    )
    out = tmp_path / "rl"
    # An initial evaluation of several seconds even on an idle machine, so that the last delay lands in it
    # (a signal there raises at once, so its length costs nothing).
    cmd = [rlready, "rl", "--init", str(pre / "final"), "--out", str(out), "--eval.reasoning_problems", "256"]
    cmd += ["--eval.samples", "16", "--eval.pass_k", "4", "--eval.max_new_tokens", "48"]
    cmd += ["--log.progress", "lines"]
    rl = subprocess.Popen(cmd, env=proc_env(env), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "config.json").is_file(), 300, "the RL stage to claim --out")
        time.sleep(delay)
        rl.send_signal(signal.SIGTERM)
        _, err = rl.communicate(timeout=120)
    finally:
        if rl.poll() is None:
            rl.kill()
            rl.wait()
    assert rl.returncode == 3, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlready: interrupted by SIGTERM during ") and last.endswith(
        "; run the same command to resume"
    )
    assert not (out / "eval_initial.json").exists()


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_command_starts_exits_3_with_the_message(env, tmp_path, sig):
    """Seconds go by importing torch and transformers before a stage handles its own signals."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [venv_script("rlready"), "pretrain", "--out", str(out), *stage_args(env)],
        env=proc_env(env),
        stderr=subprocess.PIPE,
        text=True,
    )
    # As soon as the command has its start-up handlers (installed together, before the heavy imports), not
    # after a fixed delay: on a loaded machine the interpreter alone can outlast any delay, and a SIGINT that
    # a test runner's worker ignores stays ignored until then. Python catches SIGINT from its own start, so
    # the sign is SIGTERM, which only the command catches.
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the second handler of the pair
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert err.strip().splitlines()[-1].startswith(f"rlready: interrupted by {sig.name} during ")
    assert not out.exists() or not (out / "checkpoints").exists()
