"""Exact resume (CPU, one thread): a run killed at any moment and started again with the same command ends with
bit-identical final weights and the same metrics as an uninterrupted run.

Each scenario runs the real CLI in a subprocess, watches the run directory, and kills the process when a
chosen moment is reached (a checkpoint is complete, a step is under way, a checkpoint is being written).
The scenarios run concurrently; together they take a few minutes on 2 cores, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lm_runs import signal_when

pytestmark = pytest.mark.slow

ARGS = [
    "--train.max_steps", "8", "--train.batch_size", "4", "--train.micro_batch", "2",
    "--train.checkpoint_every", "2", "--train.log_every", "1", "--train.warmup_steps", "2",
    "--data.seq_len", "32", "--data.world_chars", "60000", "--eval.tokens", "512",
    "--eval.knowledge_questions", "1", "--eval.reasoning_problems", "1", "--eval.samples", "1",
    "--eval.pass_k", "1", "--eval.max_new_tokens", "2", "--log.progress", "lines",
]  # fmt: skip


def command(out: Path, tok: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlready.cli",
        "pretrain",
        "--out",
        str(out),
        *ARGS,
        "--data.tokenizer",
        str(tok),
    ]


def steps_logged(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return len(lines)


def writing_checkpoint(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.startswith(".step_") for p in root.iterdir())


def run_until(out: Path, tok: Path, env: dict, when: Callable[[Path], bool], sig: int) -> tuple[int, str]:
    """Start the run, send ``sig`` as soon as ``when(out)`` holds, and wait for the process to end."""
    return signal_when(command(out, tok), out, env, when, sig)


def finish(out: Path, tok: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, tok), env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rlready.data import tokenizer, world

    root = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "RLREADY_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    w = world.World(world.WorldConfig(seed=0))
    tokenizer.save_tokenizer(
        tokenizer.train_tokenizer(w.documents("pretrain", n_chars=60000), 512), root / "tok"
    )
    # Fill the token cache once, so that concurrent scenarios only read it.
    ref = finish(root / "reference", root / "tok", env)
    assert ref.returncode == 0, ref.stderr
    return root, env


def _scenario(name: str, root: Path, env: dict) -> dict:
    out, tok = root / name, root / "tok"
    first: tuple[int, str] = (0, "")
    if name == "kill-after-checkpoint":
        first = run_until(
            out, tok, env, lambda o: (o / "checkpoints" / "step_00000004").is_dir(), signal.SIGKILL
        )
    elif name == "kill-mid-step":
        first = run_until(out, tok, env, lambda o: steps_logged(o) >= 5, signal.SIGKILL)
    elif name == "kill-while-writing-checkpoint":
        first = run_until(out, tok, env, writing_checkpoint, signal.SIGKILL)
    elif name == "sigterm":
        first = run_until(out, tok, env, lambda o: steps_logged(o) >= 3, signal.SIGTERM)
    elif name == "sigint":
        first = run_until(out, tok, env, lambda o: steps_logged(o) >= 5, signal.SIGINT)
    elif name == "damaged-newest":
        first = run_until(
            out, tok, env, lambda o: (o / "checkpoints" / "step_00000006").is_dir(), signal.SIGKILL
        )
        f = out / "checkpoints" / "step_00000006" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    ckpts_after_kill = (
        sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
    )
    second = finish(out, tok, env)
    return {"first": first, "ckpts": ckpts_after_kill, "second": second}


SCENARIOS = [
    "kill-after-checkpoint",
    "kill-mid-step",
    "kill-while-writing-checkpoint",
    "sigterm",
    "sigint",
    "damaged-newest",
]


@pytest.fixture(scope="module")
def scenarios(setup):
    root, env = setup
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_scenario, name, root, env) for name in SCENARIOS}
        return {name: f.result() for name, f in futures.items()}


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "final" / "model.safetensors")


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        del r["tokens_per_s"]
    return rows


@pytest.mark.parametrize("name", SCENARIOS)
def test_resumed_run_is_bit_identical(setup, scenarios, name):
    root, _ = setup
    result = scenarios[name]
    assert result["first"][0] != 0, f"the first attempt was not interrupted: {result['first'][1]}"
    assert result["second"].returncode == 0, result["second"].stderr
    ref, got = weights(root / "reference"), weights(root / name)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    # Each step is logged once, with the same values as without the interruption.
    assert metrics(root / name) == metrics(root / "reference")
    ev_ref = json.loads((root / "reference" / "eval.json").read_text())
    assert json.loads((root / name / "eval.json").read_text()) == ev_ref
    assert not [p for p in (root / name / "checkpoints").iterdir() if p.name.startswith(".")]


def test_kill_while_writing_left_a_partial_checkpoint_that_was_ignored(scenarios):
    result = scenarios["kill-while-writing-checkpoint"]
    assert any(n.startswith(".step_") for n in result["ckpts"]), result["ckpts"]


@pytest.mark.parametrize("name", ["sigterm", "sigint"])
def test_signal_finishes_the_step_checkpoints_and_says_so(scenarios, name):
    code, err = scenarios[name]["first"]
    assert code == 3
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlready: interrupted at step") and "run the same command to resume" in last
    step = int(last.split("interrupted at step ")[1].split(";")[0])
    assert f"step_{step:08d}" in scenarios[name]["ckpts"]
    assert f"resuming from step_{step:08d}" in scenarios[name]["second"].stderr


def test_damaged_newest_checkpoint_is_reported_and_the_previous_used(scenarios):
    err = scenarios["damaged-newest"]["second"].stderr
    damaged = [line for line in err.splitlines() if "damaged" in line]
    assert len(damaged) == 1 and "step_00000006" in damaged[0] and "model.safetensors" in damaged[0]
    assert "resuming from step_00000004" in err


def test_keep_last_checkpoints(setup):
    root, _ = setup
    names = sorted(p.name for p in (root / "reference" / "checkpoints").iterdir())
    assert names == ["step_00000004", "step_00000006"]  # saved at 2, 4, 6; keep 2
