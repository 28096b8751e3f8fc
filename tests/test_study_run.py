"""``rlready study`` end to end in real processes, on a model and data small enough for seconds per stage:
every stage runs, the summary and report are written, and the same command again starts no stage. With
``--launcher torchrun`` every stage runs as two processes and a resume without the launcher is the same study."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lm_runs import venv_script

pytestmark = pytest.mark.slow

FAST = [
    "--train.max_steps", "2", "--data.world_chars", "60000", "--data.vocab_size", "512", "--data.seq_len", "32",
    "--train.batch_size", "4", "--train.micro_batch", "2", "--eval.tokens", "512",
    "--eval.knowledge_questions", "2", "--eval.reasoning_problems", "2", "--eval.samples", "2",
    "--eval.pass_k", "2", "--eval.max_new_tokens", "4", "--rl.prompts_per_step", "2", "--rl.minibatches", "1",
    "--rl.group_size", "4", "--rl.max_new_tokens", "8", "--rl.train_problems", "16", "--rl.max_rounds", "2",
    "--rl.micro_batch", "8",
]  # fmt: skip


@pytest.mark.parametrize(
    "launcher", [None, "torchrun --standalone --nproc_per_node 2"], ids=["local", "torchrun"]
)
def test_study_runs_every_stage_and_a_rerun_starts_none(tmp_path: Path, launcher: str | None) -> None:
    (tmp_path / "configs.yaml").write_text("- {name: CE}\n- {name: b, beta: -0.25}\n")
    rlready = venv_script("rlready")
    env = {**os.environ, "RLREADY_CACHE": str(tmp_path / "cache")}
    cmd = [rlready, "study", "--out", str(tmp_path / "s"), "--configs", str(tmp_path / "configs.yaml"), *FAST]
    first = subprocess.run(
        cmd + (["--launcher", launcher] if launcher else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [(r["name"], r["beta"], r["seed"]) for r in summary["runs"]] == [
        ("CE", "0.0", 0),
        ("b", "-0.25", 0),
    ]
    for run in summary["runs"]:
        assert {"pretrain", "midtrain", "rl"} <= run.keys() and "initial" in run["rl"]
    assert (tmp_path / "s" / "report.md").is_file() and list((tmp_path / "s" / "figures").glob("*.png"))
    logs = {p.name: p.read_text() for p in (tmp_path / "s" / "runs" / "CE-s0").glob("*.log")}
    for stage in ("pretrain", "midtrain", "rl"):
        assert ("2 processes (DDP)" in logs[f"{stage}.log"]) == bool(launcher)

    again = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600
    )  # never with the launcher
    assert again.returncode == 0, again.stderr[-3000:]
    assert "started" not in again.stdout and "study done" in again.stdout, again.stdout
