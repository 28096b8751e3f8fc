"""The model directories rlready writes load alike under the newest transformers and the oldest one that
pyproject allows: same token ids, no ``token_type_ids``, a pad distinct from EOS, the trained sequence length
as ``model_max_length``, a response length in generation_config.json, the saved RoPE base, equal logits and
equal greedy generation.

The directories come from the stages themselves: mid-training from a pre-training-like ``--init`` (RoPE base
1e4 raised to 1e6, greedy evaluations with padded batches before ``final/`` is written), RL from that, a
tokenizer directory as an LM run writes it, and one that save_model writes while rlready itself runs under the
oldest version. The newest version is checked here in process; the oldest through ``tests/hf_compat_probe.py``
run by the Python in ``RLREADY_OLDEST_PYTHON`` (``make test-compat`` makes that environment and sets it).
"""

from __future__ import annotations

import json
import math
import operator
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hf_compat_probe import LONG, PROMPTS, TEXTS, probe
from lm_runs import make_cfg

from rlready import recipes

SEQ_LEN = 64  # mid-training's sequence length here: the saved model_max_length
EVAL_NEW_TOKENS = 24  # more than transformers' default generation length of 20 in all
RL_NEW_TOKENS = 28
PROBE = Path(__file__).with_name("hf_compat_probe.py")
OLDEST_PYTHON = os.environ.get("RLREADY_OLDEST_PYTHON")


@pytest.fixture(scope="module")
def dirs(env, tmp_path_factory) -> dict[str, Path]:
    """``init`` (by save_model), ``tokenizer`` (by save_tokenizer) and ``midtrain`` (the stage's final/)."""
    from rlready.data.tokenizer import load_tokenizer, save_tokenizer
    from rlready.models import build_config, build_model, save_model
    from rlready.train import lm

    root = tmp_path_factory.mktemp("compat")
    tok = load_tokenizer(env / "tok")
    tok.padding_side = "left"
    tok(PROMPTS, padding=True)  # a padded call switches padding on in the Rust tokenizer
    save_tokenizer(tok, root / "tokenizer", model_max_length=32)
    torch.manual_seed(0)
    config = build_config("tiny", vocab_size=len(tok))  # pre-training's RoPE base, 1e4
    config.bos_token_id = config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    init = save_model(build_model(config), tok, root / "init", max_length=32)
    cfg = make_cfg(
        env,
        "midtrain",
        **{
            "model.init": str(init),
            "train.max_steps": "2",
            "train.eval_every": "1",  # greedy evaluation (padded batches) before final/ is saved
            "data.seq_len": str(SEQ_LEN),
            "eval.max_new_tokens": str(EVAL_NEW_TOKENS),
            "model.rope_theta": "1e6",  # the paper's mid-training base, which a loader must not drop
        },
    )
    assert cfg.model.rope_theta == 1e6
    lm.run(cfg, root / "mid")
    return {"init": init, "tokenizer": root / "tokenizer", "midtrain": root / "mid" / "final"}


@pytest.fixture(scope="module")
def rl_final(dirs, tmp_path_factory) -> Path:
    """``final/`` of a one-step RL run from the mid-trained model (rollouts pad prompts before its save)."""
    from rlready.train import rl

    mp = pytest.MonkeyPatch()
    # The untrained policy almost never writes an answer; a lexicographic reward still varies within groups.
    # operator.lt is picklable for the spawned reward workers.
    mp.setattr("rlready.rl.rewards.get_reward", lambda name: operator.lt)
    overrides = {
        "model.init": str(dirs["midtrain"]),
        "train.max_steps": "1",
        "rl.prompts_per_step": "2",
        "rl.group_size": "2",
        "rl.minibatches": "1",
        "rl.max_new_tokens": str(RL_NEW_TOKENS),
        "rl.max_rounds": "1",
        "eval.reasoning_problems": "2",
        "eval.samples": "2",
        "eval.pass_k": "1",
        "eval.max_new_tokens": "4",
        "log.progress": "lines",
    }
    out = tmp_path_factory.mktemp("rl") / "run"
    try:
        rl.run(recipes.resolve("rl", "tiny", overrides=list(overrides.items())), out)
    finally:
        mp.undo()
    return out / "final"


def _expected_inv_freq(directory: Path, theta: float) -> torch.Tensor:
    """RoPE's inverse frequencies for base ``theta``, from the RoPE paper's formula, not from transformers."""
    head_dim = json.loads((directory / "config.json").read_text())["head_dim"]
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def _check_files(directory: Path, *, max_length: int, new_tokens: int | None) -> None:
    """What the saved files say, read as JSON: the keys both transformers generations read."""
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # not 5's internal TokenizersBackend
    assert tok_config["model_max_length"] == max_length
    assert "token_type_ids" not in tok_config["model_input_names"]
    assert tok_config["pad_token"] != tok_config["eos_token"]
    spec = json.loads((directory / "tokenizer.json").read_text())
    assert spec["padding"] is None and spec["truncation"] is None
    if new_tokens is None:
        return
    config = json.loads((directory / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e6
    assert config["rope_scaling"] is None and config["rope_parameters"]["rope_type"] == "default"
    assert config["pad_token_id"] != config["eos_token_id"]
    gen = json.loads((directory / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == new_tokens
    assert gen["pad_token_id"] == config["pad_token_id"] and gen["eos_token_id"] == config["eos_token_id"]


def _check_probe(got: dict, directory: Path, *, max_length: int, new_tokens: int | None) -> None:
    """One transformers version's view of ``directory``, against references that do not use transformers."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert got["ids"] == [raw.encode(t).ids for t in TEXTS]
    assert got["decoded"] == TEXTS
    # A tokenizers client gets unpadded batches from the saved file: each row is the text's own encoding.
    assert [e.ids for e in raw.encode_batch(PROMPTS)] == [raw.encode(p).ids for p in PROMPTS]
    assert got["keys"] == ["attention_mask", "input_ids"]
    pad, eos = got["pad_token_id"], got["eos_token_id"]
    assert pad is not None and pad != eos
    assert got["padding_side"] == "left" and got["model_max_length"] == max_length
    width = max(len(raw.encode(p).ids) for p in PROMPTS)
    for prompt, row, mask in zip(PROMPTS, got["batch_ids"], got["batch_mask"], strict=True):
        ids = raw.encode(prompt).ids
        assert row == [pad] * (width - len(ids)) + ids and mask == [0] * (width - len(ids)) + [1] * len(ids)
    if new_tokens is None:
        return
    assert got["generation"] == {"max_new_tokens": new_tokens, "eos_token_id": eos, "pad_token_id": pad}
    assert torch.allclose(
        torch.tensor(got["inv_freq"], dtype=torch.float64), _expected_inv_freq(directory, 1e6), rtol=1e-6
    )
    assert got["long_len"] == max_length == min(max_length, len(raw.encode(LONG).ids))
    for row in got["generated"]:
        # A bare generate runs to max_new_tokens or EOS (then pads): not transformers' default 20 in all.
        assert len(row) <= new_tokens
        assert len(row) == new_tokens or eos in row
        if eos in row:
            assert set(row[row.index(eos) + 1 :]) <= {pad}


def test_saved_directories_load_right_under_the_newest_transformers(dirs) -> None:
    import transformers

    from rlready.models import load_model

    assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__
    _check_files(dirs["midtrain"], max_length=SEQ_LEN, new_tokens=EVAL_NEW_TOKENS)
    _check_files(dirs["tokenizer"], max_length=32, new_tokens=None)
    got = probe(str(dirs["midtrain"]))
    _check_probe(got, dirs["midtrain"], max_length=SEQ_LEN, new_tokens=EVAL_NEW_TOKENS)
    _check_probe(
        probe(str(dirs["tokenizer"]), with_model=False), dirs["tokenizer"], max_length=32, new_tokens=None
    )
    # The Auto classes see the same model as rlready's own loader (which the next stage's --init uses).
    from tokenizers import Tokenizer

    long_ids = Tokenizer.from_file(str(dirs["midtrain"] / "tokenizer.json")).encode(LONG).ids[:SEQ_LEN]
    with torch.no_grad():
        want = load_model(dirs["midtrain"]).eval()(torch.tensor([long_ids])).logits[0]
    assert torch.allclose(torch.tensor(got["logits"]), want, rtol=0, atol=1e-5)
    # The untrained init keeps pre-training's base: the 1e6 above is mid-training's, not a default.
    init = json.loads((dirs["init"] / "config.json").read_text())
    assert init["rope_theta"] == init["rope_parameters"]["rope_theta"] == 1e4


def _run_elsewhere(cmd: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _probe_elsewhere(python: str, directory: Path, *, with_model: bool = True) -> dict:
    return json.loads(
        _run_elsewhere([python, str(PROBE), str(directory)] + ([] if with_model else ["--tokenizer-only"]))
    )


# rlready itself running under the oldest transformers: mid-training's rebase to 1e6 and save_model.
_SAVE_UNDER_OLDEST = """
import sys
import torch
from rlready.data.tokenizer import load_tokenizer
from rlready.models import build_config, build_model, save_model, set_rope_theta

tok = load_tokenizer(sys.argv[1])
tok.padding_side = "left"
tok(["a", "a longer prompt"], padding=True)
torch.manual_seed(0)
config = build_config("tiny", vocab_size=len(tok))
config.bos_token_id = config.eos_token_id = tok.eos_token_id
config.pad_token_id = tok.pad_token_id
model = build_model(config)
set_rope_theta(model, 1e6)
save_model(model, tok, sys.argv[2], max_length=int(sys.argv[3]), max_new_tokens=int(sys.argv[4]))
"""


@pytest.fixture(scope="module")
def saved_under_oldest(dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oldest") / "final"
    args = [str(dirs["tokenizer"]), str(out), str(SEQ_LEN), str(EVAL_NEW_TOKENS)]
    _run_elsewhere([OLDEST_PYTHON, "-c", _SAVE_UNDER_OLDEST, *args])
    return out


@pytest.mark.skipif(
    not OLDEST_PYTHON,
    reason="set RLREADY_OLDEST_PYTHON to a Python with the oldest supported transformers (make test-compat)",
)
@pytest.mark.parametrize("which", ["midtrain", "rl", "tokenizer", "saved_under_oldest"])
def test_saved_directories_load_alike_under_the_oldest_transformers(which, dirs, request) -> None:
    directory = (
        dirs[which] if which in dirs else request.getfixturevalue({"rl": "rl_final"}.get(which, which))
    )
    max_length = 32 if which == "tokenizer" else SEQ_LEN  # RL keeps the mid-trained model's length
    new_tokens = {"rl": RL_NEW_TOKENS, "tokenizer": None}.get(which, EVAL_NEW_TOKENS)
    with_model = which != "tokenizer"
    _check_files(directory, max_length=max_length, new_tokens=new_tokens)
    here = probe(str(directory), with_model=with_model)
    there = _probe_elsewhere(OLDEST_PYTHON, directory, with_model=with_model)
    assert there["transformers"].split(".")[0] != here["transformers"].split(".")[0], (
        f"RLREADY_OLDEST_PYTHON has transformers {there['transformers']}, the same generation as here"
    )
    for got in (here, there):
        _check_probe(got, directory, max_length=max_length, new_tokens=new_tokens)
    for key in ("ids", "batch_ids", "batch_mask", "keys", "decoded", "pad_token_id", "eos_token_id"):
        assert there[key] == here[key], key
    if not with_model:
        return
    assert there["generation"] == here["generation"]
    assert there["inv_freq"] == pytest.approx(here["inv_freq"], rel=1e-6)
    diff = (torch.tensor(there["logits"]) - torch.tensor(here["logits"])).abs().max().item()
    assert math.isfinite(diff) and diff <= 1e-5, f"logits differ by up to {diff}"
    assert there["generated"] == here["generated"]
