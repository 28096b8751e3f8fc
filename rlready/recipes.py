"""Per-stage, per-preset defaults (PAPER.md §4 recipe, scaled to each preset).

The paper: pre-train at lr 3e-4 with 2000 warmup steps, 16M-token batches, 4096-token sequences, RoPE base
1e4; mid-train with lr decaying 3e-4 -> 3e-5, 16384-token sequences, RoPE base 1e6, a reasoning-heavy mix.
Small CPU presets keep the shape of that recipe with a higher learning rate and far fewer tokens.
"""

from __future__ import annotations

from typing import Any

_PRETRAIN: dict[str, dict[str, Any]] = {
    "tiny": {
        # Arithmetic with one-digit operands and at most two operations: what a ~1M-parameter model learns
        # in minutes, so that RL starts with a non-zero success rate.
        "data": {
            "seq_len": 128,
            "vocab_size": 2048,
            "world_chars": 4_000_000,
            "reasoning_max_steps": 2,
            "reasoning_max_operand": 9,
        },
        "train": {
            "max_steps": 300,
            "batch_size": 16,
            "micro_batch": 16,
            "lr": 3e-3,
            "final_lr": 3e-4,
            "warmup_steps": 30,
            "checkpoint_every": 150,
            "log_every": 10,
            "eval_every": 0,
        },
        "eval": {
            "tokens": 32768,
            "knowledge_questions": 100,
            "reasoning_problems": 32,
            "samples": 8,
            "pass_k": 4,
        },
    },
    "tiny-moe": {
        "data": {"seq_len": 128, "vocab_size": 2048},
        "train": {
            "max_steps": 300,
            "batch_size": 16,
            "micro_batch": 16,
            "lr": 3e-3,
            "final_lr": 3e-4,
            "warmup_steps": 30,
        },
    },
}
_PAPER_PRETRAIN = {
    "data": {"seq_len": 4096},
    "train": {
        "max_steps": 30000,
        "batch_size": 4096,
        "micro_batch": 4,
        "lr": 3e-4,
        "final_lr": 3e-4,
        "warmup_steps": 2000,
        "decay_fraction": 0.0,
        "checkpoint_every": 500,
        "log_every": 10,
    },
}
for _name in ("dense-1b", "dense-4b", "moe-5b-a0.3b", "moe-10b-a0.5b", "moe-20b-a1b"):
    _PRETRAIN[_name] = _PAPER_PRETRAIN
# About twice tiny's model on tiny's recipe and token budget, with problems of up to three steps: one CE run (600
# mid-training steps) solved 27% of held-out problems (Avg@8) with Pass@8 at 69%, leaving RL room to find more
# (+0.14 after 30 steps), where two-step problems started at 65% and gained +0.02. About 10 minutes per
# configuration on one thread: the three-seed study took 86 minutes on 2 cores.
_PRETRAIN["small"] = {
    "data": {**_PRETRAIN["tiny"]["data"], "reasoning_max_steps": 3},
    "train": dict(_PRETRAIN["tiny"]["train"]),
    "eval": {
        **_PRETRAIN["tiny"]["eval"],
        "tokens": 65536,
        "knowledge_questions": 200,
        "reasoning_problems": 64,
        "max_new_tokens": 48,
    },
}


# Mid-training steps where a third of pre-training is too short. The tiny model learns to copy the operands
# of a word problem only after about 600 steps in all: with 450 + 150 steps it solved ~9% of held-out
# problems (Avg@8), too few for RL to find much; with 300 + 400 steps, ~67%, with Pass@8 near 90%.
_MIDTRAIN_STEPS = {"tiny": 400, "small": 600}


def stage_defaults(stage: str, preset: str) -> dict[str, Any]:
    base = _PRETRAIN.get(preset, {})
    out: dict[str, Any] = {section: dict(values) for section, values in base.items()}
    if stage == "midtrain":
        # Longer sequences, RoPE base 1e4 -> 1e6, LR decaying from the pre-training LR to a tenth.
        train = out.setdefault("train", {})
        data = out.setdefault("data", {})
        lr = train.get("lr", 3e-4)
        seq = data.get("seq_len", 256)
        data["seq_len"] = seq * 2 if seq < 4096 else 16384
        train.update(lr=lr, final_lr=lr / 10, warmup_steps=0, decay_fraction=1.0)
        train["max_steps"] = _MIDTRAIN_STEPS.get(preset, max(1, train.get("max_steps", 1000) // 3))
        train["eval_every"] = max(1, train["max_steps"] // 2)  # knowledge/reasoning curves along mid-training
        if "batch_size" in train and seq < 4096:
            train["batch_size"] = max(1, train["batch_size"] // 2)
            train["micro_batch"] = min(train.get("micro_batch", train["batch_size"]), train["batch_size"])
        elif seq >= 4096:
            train["batch_size"] = 1024  # 16M tokens per batch at 16384 tokens per sequence
            train["micro_batch"] = 1
        out.setdefault("model", {})["rope_theta"] = 1e6
    elif stage == "rl":
        out = {section: dict(values) for section, values in _RL.get(preset, _PAPER_RL).items()}
    return out


# RL (PAPER.md §4, RLVR row): GRPO, no KL, constant LR, temperature 1.0; the optimizer runs on train.*.
# Small presets use far fewer prompts per step and a much larger LR than the paper's 1e-6, which is tuned
# for billion-parameter models. Four mini-batch updates per rollout batch make the ratio differ from 1 so
# that clip-higher acts (PAPER.md §5); verl's DAPO recipe uses 16 at 128 prompts x 16 samples.
_RL_TRAIN_COMMON = {"warmup_steps": 0, "decay_fraction": 0.0, "weight_decay": 0.0, "grad_clip": 1.0}
_RL: dict[str, dict[str, Any]] = {
    "tiny": {
        "train": {
            **_RL_TRAIN_COMMON,
            "max_steps": 30,
            # Measured on a mid-trained tiny model (Avg@8 0.66-0.67 before RL, 64 held-out problems): lr
            # 1e-5/2e-5 -> +0.04 Avg@8 after 30 steps, 1e-4 -> -0.08, 3e-4 -> -0.34. Adam's first updates
            # move every weight by about lr whatever its gradient, which a ~1M-parameter policy does not
            # survive at pre-training LRs.
            "lr": 2e-5,
            "final_lr": 2e-5,
            "checkpoint_every": 10,
            "log_every": 1,
        },
        # Problems of at most two steps with one-digit operands, as in pre-/mid-training.
        "rl": {
            "prompts_per_step": 8,
            "group_size": 16,
            "minibatches": 4,
            "micro_batch": 64,
            "max_new_tokens": 32,
            "max_rounds": 8,
            "eval_every": 0,
            "train_problems": 512,
            "task_max_steps": 2,
            "task_max_operand": 9,
        },
        "eval": {"reasoning_problems": 64, "samples": 8, "pass_k": 4, "max_new_tokens": 32},
    },
}
_RL["tiny-moe"] = _RL["tiny"]
# tiny's RL on small's three-step problems, with room for their longer solutions; 128 held-out problems.
_RL["small"] = {
    "train": dict(_RL["tiny"]["train"]),
    "rl": {**_RL["tiny"]["rl"], "task_max_steps": 3, "max_new_tokens": 48},
    "eval": {**_RL["tiny"]["eval"], "reasoning_problems": 128, "max_new_tokens": 48},
}
# The paper's recipe: 128 prompts x 16 samples, lr 1e-6, 1000 steps, 8K responses; Avg@128 / Pass@64.
_PAPER_RL: dict[str, dict[str, Any]] = {
    "train": {
        **_RL_TRAIN_COMMON,
        "max_steps": 1000,
        "lr": 1e-6,
        "final_lr": 1e-6,
        "checkpoint_every": 50,
        "log_every": 1,
    },
    "rl": {
        "prompts_per_step": 128,
        "group_size": 16,
        "minibatches": 16,
        "micro_batch": 8,
        "max_new_tokens": 8192,
        "eval_every": 100,
        "backend": "vllm",
    },
    "eval": {
        "reasoning_problems": 128,
        "samples": 128,
        "pass_k": 64,
        "max_new_tokens": 8192,
        "temperature": 1.0,
        "top_p": 1.0,
    },
}
