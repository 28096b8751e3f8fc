"""Two CPU processes under ``torchrun`` (gloo; DDP, or FSDP2 ``fully_shard``) train the same model as one
process with the same global batch: the loss is the global token mean in all, so the final weights agree to
float rounding. An FSDP run stopped by SIGTERM and started again ends where the uninterrupted one does. Under
FSDP only rank 0 ever holds the whole model: the other ranks build a meta skeleton and get their shards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lm_runs import venv_script

pytestmark = pytest.mark.slow

ARGS = [
    "--train.max_steps", "15", "--train.batch_size", "4", "--train.micro_batch", "1",
    "--train.checkpoint_every", "0", "--train.log_every", "5", "--train.warmup_steps", "2",
    "--data.seq_len", "32", "--data.world_chars", "60000", "--eval.tokens", "512",
    "--eval.knowledge_questions", "1", "--eval.reasoning_problems", "1", "--eval.samples", "1",
    "--eval.pass_k", "1", "--eval.max_new_tokens", "2", "--log.progress", "lines",
]  # fmt: skip


def assert_same_final_weights(a_run: Path, b_run: Path, *, atol: float) -> None:
    from safetensors.torch import load_file

    a = load_file(a_run / "final" / "model.safetensors")
    b = load_file(b_run / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("parallel", [[], ["--train.fsdp", "true"]], ids=["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, parallel):
    from rlready.data import tokenizer, world

    w = world.World(world.WorldConfig(seed=0))
    tokenizer.save_tokenizer(
        tokenizer.train_tokenizer(w.documents("pretrain", n_chars=60000), 512), tmp_path / "tok"
    )
    env = {**os.environ, "RLREADY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [*ARGS, "--data.tokenizer", str(tmp_path / "tok")]
    rlready, torchrun = venv_script("rlready"), venv_script("torchrun")
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
    assert_same_final_weights(tmp_path / "one", tmp_path / "two", atol=1e-4)
    # Both processes saw the global batch: the logged token counts agree.
    assert (tmp_path / "one" / "metrics.jsonl").read_text().count('"tokens": 1920') == 1
    assert (tmp_path / "two" / "metrics.jsonl").read_text().count('"tokens": 1920') == 1


def test_fsdp_midtrain_from_init_matches_one_process(tmp_path):
    """``--init DIR`` under FSDP: rank 0 loads the weights, rank 1 builds the skeleton from config.json only."""
    env = {**os.environ, "RLREADY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [*ARGS, "--data.vocab_size", "512"]
    rlready, torchrun = venv_script("rlready"), venv_script("torchrun")
    for cmd in (
        [rlready, "pretrain", "--out", str(tmp_path / "pt"), *args, "--train.max_steps", "3"],
        [rlready, "midtrain", "--init", str(tmp_path / "pt" / "final"), "--out", str(tmp_path / "one"), *args],
        [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python", rlready, "midtrain",
         "--init", str(tmp_path / "pt" / "final"), "--out", str(tmp_path / "two"), *args, "--train.fsdp", "true"],
    ):  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same_final_weights(tmp_path / "one", tmp_path / "two", atol=1e-4)


def test_fsdp_run_resumed_after_sigterm_is_bit_identical(tmp_path):
    """SIGTERM to torchrun stops both FSDP processes after a step; the checkpoint they write together holds
    the whole model and optimizer (in the format of a one-process run); the same command resumes it and ends
    with the uninterrupted run's weights and metrics, bit for bit (same processes, same reduction order)."""

    from rlready import recipes
    from rlready.data import tokenizer, world
    from rlready.train import checkpoint, lm

    w = world.World(world.WorldConfig(seed=0))
    tok = tokenizer.train_tokenizer(w.documents("pretrain", n_chars=60000), 512)
    tokenizer.save_tokenizer(tok, tmp_path / "tok")
    env = {**os.environ, "RLREADY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    changed = {"--train.max_steps": "12", "--train.checkpoint_every": "4", "--train.log_every": "1"}
    args = [changed.get(ARGS[i - 1], a) if i else a for i, a in enumerate(ARGS)]
    args += ["--data.tokenizer", str(tmp_path / "tok"), "--train.fsdp", "true"]
    rlready, torchrun = venv_script("rlready"), venv_script("torchrun")

    def command(out: Path) -> list[str]:
        return [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python", rlready, "pretrain",
                "--out", str(out), *args]  # fmt: skip

    ref = subprocess.run(command(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "resumed"
    first = subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        logged = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").is_file() else 0
        if logged >= 6:  # past the checkpoint of step 4
            first.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = first.communicate(timeout=600)
    assert first.returncode != 0, f"the first attempt was not interrupted: {err[-3000:]}"
    stopped = [line for line in err.splitlines() if "rlready: interrupted at step" in line]
    assert stopped, err[-3000:]
    step = int(stopped[0].split("interrupted at step ")[1].split(";")[0])
    assert 6 <= step < 12, stopped

    # The checkpoint is that of a one-process run: whole weights and a numbered optimizer state that load
    # into an unsharded model and optimizer.
    ckpt = checkpoint.load_latest(out / "checkpoints", print)
    assert ckpt is not None and ckpt.step == step
    cfg = recipes.resolve(
        "pretrain", "tiny", overrides=[(a[2:], b) for a, b in zip(args[::2], args[1::2], strict=True)]
    )
    model = lm.load_or_build_model(cfg, tok, torch.device("cpu"))
    optimizer = lm.make_optimizer(model, cfg)
    checkpoint.restore(ckpt, model, optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert sorted(optimizer.state_dict()["state"]) == list(range(len(params)))
    for p in params:
        st = optimizer.state[p]
        assert st["exp_avg"].shape == st["exp_avg_sq"].shape == p.shape
        assert int(st["step"]) == step and st["exp_avg_sq"].abs().sum() > 0

    second = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from step_{step:08d}" in second.stderr
    assert_same_final_weights(tmp_path / "ref", out, atol=0.0)  # bit for bit

    def metrics(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert metrics(out) == metrics(tmp_path / "ref")
    assert [r["step"] for r in metrics(out)] == list(range(1, 13))


def _sharding_worker(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from rlready.models import build_config, build_model
    from rlready.train import dist
    from rlready.train.lm import ShapedLMLoss

    d = dist.init()
    try:
        device = dist.model_device(d, fsdp=True)
        torch.manual_seed(0)
        model = build_model(build_config("tiny"), device=device)
        wrapped = dist.wrap(ShapedLMLoss(model), d, fsdp=True)
        whole = dist.full_model_state(model, d, fsdp=True)  # gathered from every rank's shards
        torch.save(
            {
                "device": device.type,
                "whole": whole,
                "buffers": {n: b.clone() for n, b in wrapped.named_buffers()},
                "tied": model.lm_head.weight is model.model.embed_tokens.weight,
                "local_rows": model.model.embed_tokens.weight.to_local().shape[0],
            },
            out / f"rank{rank}.pt",
        )
    finally:
        dist.close(d)


def test_fsdp_ranks_other_than_0_never_hold_the_whole_model(tmp_path):
    """Rank 0 builds the model on CPU, rank 1 on the meta device; after ``wrap`` each holds half the rows of
    every matrix, the gathered weights are exactly rank 0's model, the non-persistent buffers (rotary
    frequencies) reached rank 1, and the tied embedding stayed tied."""
    from rlready.models import build_config, build_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharding_worker, args=(2, port, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    ref = build_model(build_config("tiny"))
    assert [r["device"] for r in ranks] == ["cpu", "meta"]
    assert ranks[0]["whole"].keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(ranks[0]["whole"][key], value), key
    assert ranks[1]["whole"] == {}  # gathered on rank 0 only
    ref_buffers = {f"model.{n}": b for n, b in ref.named_buffers()}
    for r in ranks:
        assert r["buffers"].keys() == ref_buffers.keys()
        for key, value in ref_buffers.items():
            assert torch.equal(r["buffers"][key], value), key
        assert r["tied"]
        assert r["local_rows"] == ref.config.vocab_size // 2
