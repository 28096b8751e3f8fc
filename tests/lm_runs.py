"""What the tests that run the stages for real share: tiny LM runs (6 steps of 4 x 32 tokens) with one
tokenizer and token cache per test module, and the untrained tiny model the RL tests start from
(``tiny_model``). The fixtures reach the tests through conftest.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rlready import config, recipes

SMALL = {
    "train.max_steps": "6",
    "train.batch_size": "4",
    "train.micro_batch": "2",
    "train.log_every": "1",
    "train.warmup_steps": "2",
    "train.checkpoint_every": "2",
    "data.seq_len": "32",
    "data.world_chars": "60000",
    "eval.tokens": "512",
    "eval.knowledge_questions": "1",
    "eval.reasoning_problems": "1",
    "eval.samples": "1",
    "eval.pass_k": "1",
    "eval.max_new_tokens": "2",
    "log.progress": "lines",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A token cache and a small tokenizer shared by every run of the importing module."""
    from rlready.data import tokenizer, world

    root = tmp_path_factory.mktemp("lm")
    mp = pytest.MonkeyPatch()
    mp.setenv("RLREADY_CACHE", str(root / "cache"))
    w = world.World(world.WorldConfig(seed=0))
    tok = tokenizer.train_tokenizer(w.documents("pretrain", n_chars=60000), 512)
    tokenizer.save_tokenizer(tok, root / "tok")
    yield root
    mp.undo()


def make_cfg(env: Path, stage: str = "pretrain", **extra: str) -> config.RunConfig:
    overrides = {**SMALL, "data.tokenizer": str(env / "tok"), **extra}
    if stage == "midtrain":  # keep the stage's own schedule: no warmup, decay over the whole run
        del overrides["train.warmup_steps"]
    return recipes.resolve(stage, "tiny", overrides=list(overrides.items()))


def venv_script(name: str) -> str:
    """A console script of this virtual environment (``rlready``, ``torchrun``), found without activating it."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed next to {sys.executable}"
    return found


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it holds; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def signal_when(
    cmd: list[str], out: Path, env: dict, when: Callable[[Path], bool], sig: int
) -> tuple[int, str]:
    """Start ``cmd``, send ``sig`` as soon as ``when(out)`` holds, wait for it to end: (exit code, stderr)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if when(out):
            proc.send_signal(sig)
            break
        time.sleep(0.0005)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Qwen3 with a small BPE tokenizer, saved in Hugging Face format."""
    import torch

    from rlready.data.tokenizer import train_tokenizer
    from rlready.data.world import World, WorldConfig
    from rlready.models import build_config, build_model, save_model

    world = World(WorldConfig(seed=0))
    tok = train_tokenizer(world.documents("midtrain", n_chars=60_000), 384)
    torch.manual_seed(0)
    cfg = build_config("tiny", vocab_size=len(tok))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg, attr, tok.eos_token_id)
    out = tmp_path_factory.mktemp("model") / "m"
    save_model(build_model(cfg), tok, out)
    return out
