"""``rlready rl`` on two CPU processes under ``torchrun`` (gloo; DDP, or FSDP2 ``fully_shard``) takes the same
updates as one process with the same settings: every process samples a share of the step's prompt groups, each
group from its own random stream, dynamic sampling counts informative groups over the whole step, and the loss
divides by the step's global token count. The final weights agree to float rounding. A two-process run killed
with SIGKILL, or stopped by SIGTERM, and started again ends where the uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lm_runs import venv_script, wait_for

pytestmark = pytest.mark.slow

# Three groups of three samples in one mini-batch: nine sequences, split 5 / 4 between two processes and run in
# micro-batches of two, so the second process runs one zero-weighted micro-batch to keep the collectives in
# step. ``operator:lt`` (a lexicographic comparison of completion and answer) gives an untrained model's groups
# rewards that vary, so every step trains.
ARGS = [
    "--train.max_steps", "4", "--train.checkpoint_every", "0", "--train.log_every", "1",
    "--rl.reward", "operator:lt", "--rl.prompts_per_step", "3", "--rl.group_size", "3",
    "--rl.minibatches", "1", "--rl.micro_batch", "2", "--rl.max_new_tokens", "6", "--rl.max_rounds", "3",
    "--rl.train_problems", "32", "--rl.eval_every", "2", "--eval.reasoning_problems", "3", "--eval.samples", "4",
    "--eval.pass_k", "2", "--eval.max_new_tokens", "6", "--log.progress", "lines",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(init: Path, out: Path, processes: int, *extra: str) -> list[str]:
    rl = [
        venv_script("rlready"),
        "rl",
        "--preset",
        "tiny",
        "--init",
        str(init),
        "--out",
        str(out),
        *ARGS,
        *extra,
    ]
    if processes == 1:
        return rl
    torchrun = venv_script("torchrun")
    return [torchrun, "--standalone", "--nproc_per_node", str(processes), "--no-python", *rl]


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("parallel", [[], ["--train.fsdp", "true"]], ids=["ddp", "fsdp"])
def test_two_processes_take_one_process_updates(
    tiny_model: Path, tmp_path: Path, parallel: list[str]
) -> None:
    _run(_command(tiny_model, tmp_path / "one", 1))
    log = _run(_command(tiny_model, tmp_path / "two", 2, *parallel))
    assert f"2 processes ({'FSDP2' if parallel else 'DDP'})" in log
    one, two = _weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")
    start = _weights(tiny_model)
    assert one.keys() == two.keys()
    assert any(not torch.equal(one[k], start[k]) for k in one), "RL did not change the weights"
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-4, msg=key)
    # The same groups were sampled and kept: the same rollout statistics, step by step.
    a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        for key in ("samples", "groups_kept", "gen_rounds", "response_len_mean", "reward_mean", "updates"):
            assert ra[key] == rb[key], (ra["step"], key)
        # Adam's update hides a gradient's scale; the logged norm shows it (N processes average theirs).
        for key in ("entropy", "loss", "grad_norm", "approx_kl"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-7), (ra["step"], key)
    ev_one, ev_two = (json.loads((tmp_path / r / "eval.json").read_text()) for r in ("one", "two"))
    assert ev_two["initial"] == ev_one["initial"]  # the held-out problems were split and gathered
    assert ev_two["avg@k_per_problem"] == ev_one["avg@k_per_problem"]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_after_a_checkpoint(cmd: list[str], out: Path, how: str) -> str:
    """Start ``cmd`` and stop it once a checkpoint exists: ``kill`` SIGKILLs torchrun and its workers (each in a
    session of its own) at once, as a lost node; ``term`` sends SIGTERM to torchrun, which forwards it; ``one``
    sends SIGTERM to one worker; ``orphan`` SIGKILLs torchrun alone. Returns its stderr."""
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, workers = time.monotonic() + 600, []
    while first.poll() is None and time.monotonic() < deadline:
        if (out / "checkpoints").is_dir() and list((out / "checkpoints").glob("step_*")):
            workers = _children(first.pid)
            if how == "one":  # one worker only, as on a preempted node: every process must stop with it
                os.kill(max(workers), signal.SIGTERM)
                break
            for pid in workers if how == "kill" else []:
                os.kill(pid, signal.SIGKILL)
            first.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
            break
        time.sleep(0.01)
    _, err = first.communicate(timeout=120)
    assert first.returncode != 0 and len(workers) == 2, f"the run was not stopped mid-way: {err[-2000:]}"
    # No worker runs on: killed, or ended by the SIGTERM that torchrun forwards or its death gives them (their
    # stderr is torchrun's, so ``communicate`` above waited for them to close it).
    wait_for(
        lambda: not any(map(_running, workers)), 60, f"workers {workers} to end after torchrun", interval=0.1
    )
    if how in ("term", "one"):  # (torchrun adds a traceback of its own when a worker exits with an error)
        assert "rlready: interrupted at step" in err, err[-2000:]
    assert not (out / "eval.json").exists()
    return err


@pytest.mark.parametrize(
    ("parallel", "stops"),
    [([], ("kill", "term", "one", "orphan")), (["--train.fsdp", "true"], ("kill",))],
    ids=["ddp", "fsdp"],
)
def test_two_process_run_stopped_and_restarted_ends_where_an_uninterrupted_one_does(
    tiny_model: Path, tmp_path: Path, parallel: list[str], stops: tuple[str, ...]
) -> None:
    every = ["--train.max_steps", "6", "--train.checkpoint_every", "2", *parallel]
    _run(_command(tiny_model, tmp_path / "ref", 2, *every))
    ref = _weights(tmp_path / "ref" / "final")

    for how in stops:
        out = tmp_path / how
        _stop_after_a_checkpoint(_command(tiny_model, out, 2, *every), out, how)
        _run(_command(tiny_model, out, 2, *every))
        resumed = _weights(out / "final")
        for key in ref:
            assert torch.equal(resumed[key], ref[key]), (how, key)
        assert [r["step"] for r in _records(out)] == [1, 2, 3, 4, 5, 6]
