"""Two CPU processes under ``torchrun`` (gloo; DDP, or FSDP2 ``fully_shard``) train the same model as one
process with the same global batch: the loss is the global token mean in all, so the final weights agree to
float rounding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ARGS = [
    "--train.max_steps", "15", "--train.batch_size", "4", "--train.micro_batch", "1",
    "--train.checkpoint_every", "0", "--train.log_every", "5", "--train.warmup_steps", "2",
    "--data.seq_len", "32", "--data.world_chars", "60000", "--eval.tokens", "512",
    "--eval.knowledge_questions", "1", "--eval.reasoning_problems", "1", "--eval.samples", "1",
    "--eval.pass_k", "1", "--eval.max_new_tokens", "2", "--log.progress", "lines",
]  # fmt: skip


@pytest.mark.parametrize("parallel", [[], ["--train.fsdp", "true"]], ids=["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, parallel):
    from safetensors.torch import load_file

    from rlready.data import tokenizer, world

    w = world.World(world.WorldConfig(seed=0))
    tokenizer.save_tokenizer(
        tokenizer.train_tokenizer(w.documents("pretrain", n_chars=60000), 512), tmp_path / "tok"
    )
    env = {**os.environ, "RLREADY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [*ARGS, "--data.tokenizer", str(tmp_path / "tok")]
    rlready = shutil.which("rlready", path=str(Path(sys.executable).parent))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert rlready and torchrun
    one = subprocess.run(
        [rlready, "pretrain", "--out", str(tmp_path / "one"), *args], env=env, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python", rlready, "pretrain",
         "--out", str(tmp_path / "two"), *args, *parallel],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-4, msg=key)
    # Both processes saw the global batch: the logged token counts agree.
    assert (tmp_path / "one" / "metrics.jsonl").read_text().count('"tokens": 1920') == 1
    assert (tmp_path / "two" / "metrics.jsonl").read_text().count('"tokens": 1920') == 1
