"""Exact resume with two threads: a mid-training run stopped by SIGTERM or SIGKILL and started again ends with
the weights of an uninterrupted run.

With a loss without top-k terms the numba head kernel (``rlready.losses.head_cpu``) first runs at the first
logging step of a process, which for a resumed process is a later step than for an uninterrupted one. Its
first call starts numba's OpenMP pool, so it must leave PyTorch's threading (OpenMP thread count and
nesting, MKL's dynamic threading) as it found it, or the steps in between run differently after a restart.
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

THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}

# 12 steps, logged every 4 (the kernel's first call: step 4 here, step 8 after a restart at step 5 or 6).
ARGS = [
    "--train.max_steps", "12", "--train.batch_size", "4", "--train.micro_batch", "2",
    "--train.checkpoint_every", "3", "--train.log_every", "4", "--data.seq_len", "32",
    "--data.world_chars", "60000", "--eval.tokens", "256", "--eval.knowledge_questions", "1",
    "--eval.reasoning_problems", "1", "--eval.samples", "1", "--eval.pass_k", "1",
    "--eval.max_new_tokens", "2", "--log.progress", "lines",
]  # fmt: skip

_STATE = """
import ctypes, json, os, torch
def state():
    omp = ctypes.CDLL(None)
    out = {"torch": torch.get_num_threads(), "nested": omp.omp_get_nested(),
           "levels": omp.omp_get_max_active_levels()}
    try:
        mkl = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        out["mkl_dynamic"] = mkl.mkl_serv_get_dynamic()
    except (OSError, AttributeError):  # a PyTorch without MKL
        pass
    return out
x = torch.randn(256, 256)
x @ x  # PyTorch's OpenMP pool is up, as in a training run
before = state()
from rlready.losses.select import head_terms
z = torch.randn(64, 1024)
head_terms(z, z.softmax(-1), torch.zeros(64, dtype=torch.long), 100)
print(json.dumps([before, state()]))
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_the_head_kernels_first_call_leaves_pytorchs_threading_as_it_was(threads):
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.run(
        [sys.executable, "-c", _STATE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout)
    assert after == before


def _command(out: Path, init: Path) -> list[str]:
    return [sys.executable, "-m", "rlready.cli", "midtrain", "--out", str(out), "--init", str(init), *ARGS]


def _steps_logged(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _finish(out: Path, init: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out, init), env=env, capture_output=True, text=True, timeout=300)


def _interrupted_then_resumed(
    out: Path, init: Path, env: dict, when: Callable[[Path], bool], sig: int
) -> tuple[int, subprocess.CompletedProcess]:
    returncode, _ = signal_when(_command(out, init), out, env, when, sig)
    return returncode, _finish(out, init, env)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "final" / "model.safetensors")


@pytest.mark.slow
def test_midtrain_resumed_with_two_threads_is_bit_identical(tmp_path):
    from rlready.data.tokenizer import train_tokenizer
    from rlready.data.world import World, WorldConfig
    from rlready.models import build_config, build_model, save_model

    tok = train_tokenizer(World(WorldConfig(seed=0)).documents("pretrain", n_chars=60_000), 512)
    torch.manual_seed(0)
    model_cfg = build_config("tiny", vocab_size=len(tok))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model_cfg, attr, tok.eos_token_id)
    init = save_model(build_model(model_cfg), tok, tmp_path / "init")
    env = {**os.environ, **THREADS, "RLREADY_CACHE": str(tmp_path / "cache")}

    ref = _finish(tmp_path / "reference", init, env)  # also fills the token cache the others read
    assert ref.returncode == 0, ref.stderr
    scenarios = {
        "sigterm": (lambda o: _steps_logged(o) >= 1, signal.SIGTERM),  # stops at step 5
        "sigkill": (lambda o: (o / "checkpoints" / "step_00000006").is_dir(), signal.SIGKILL),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_interrupted_then_resumed, tmp_path / name, init, env, when, sig)
            for name, (when, sig) in scenarios.items()
        }
        results = {name: f.result() for name, f in futures.items()}

    expected = _weights(tmp_path / "reference")
    for name, (first_rc, second) in results.items():
        assert first_rc != 0, f"{name}: the first attempt was not interrupted"
        assert second.returncode == 0, second.stderr
        assert "resuming from step_" in second.stderr, second.stderr
        got = _weights(tmp_path / name)
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), f"{name}: {key}"
