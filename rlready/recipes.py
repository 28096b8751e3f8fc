"""Recipes: per-stage, per-preset defaults (docs/method.md §6: the paper's recipe, scaled to each preset),
and ``resolve``, which builds a run's configuration from them.

The paper: pre-train at lr 3e-4 with 2000 warmup steps, 16M-token batches, 4096-token sequences, RoPE base
1e4; mid-train with lr decaying 3e-4 -> 3e-5, 16384-token sequences, RoPE base 1e6, a reasoning-heavy mix.
Small CPU presets keep the shape of that recipe with a higher learning rate and far fewer tokens.

Every recipe is a function that returns a typed ``RunConfig``; ``stage_defaults`` picks the one for a stage
and preset, and ``resolve`` applies a file and overrides on top of it. Above ``rlready.config`` (the typed sections and
their parsing), which imports nothing of this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlready import config
from rlready.config import (
    STAGES,
    ConfigError,
    DataConfig,
    EvalConfig,
    RLConfig,
    RunConfig,
    TrainConfig,
)

# The presets trained on the paper's own recipe.
PAPER_PRESETS = ("dense-1b", "dense-4b", "moe-5b-a0.3b", "moe-10b-a0.5b", "moe-20b-a1b")


# -- pre-training ----------------------------------------------------------------------------------------


def _cpu_pretrain(**train: Any) -> RunConfig:
    """The CPU presets' pre-training: 600 steps of 8 sequences of 128 tokens, lr 3e-3 after 60 warmup steps,
    decaying to 3e-4 (docs/method.md §9); ``train`` adds to the ``TrainConfig``.

    Small batches because at this scale the number of updates, more than of tokens, decides when a model
    learns to copy a problem's numbers (what every solution needs first): on the same tokens and time, 600 x 8
    sequences reached a lower perplexity than 300 x 16 in a pilot, and the models mid-trained after them
    solved more held-out problems (BENCHMARKS.md, "Preset sizing notes")."""
    return RunConfig(
        data=DataConfig(seq_len=128, vocab_size=2048),
        train=TrainConfig(
            max_steps=600, batch_size=8, micro_batch=8, lr=3e-3, final_lr=3e-4, warmup_steps=60, **train
        ),
    )


def _tiny_pretrain() -> RunConfig:
    # Arithmetic with operands up to 11 and at most two operations: what a ~1M-parameter model learns in
    # minutes, so that RL starts with a non-zero success rate. Up to 11 rather than 9: mid-trained seeds then
    # differ less, presumably because with more numbers to choose from guessing a problem's number pays less
    # and copying it more (docs/method.md §9; BENCHMARKS.md, "Preset sizing notes").
    cpu = _cpu_pretrain(checkpoint_every=300)
    return replace(
        cpu,
        data=replace(cpu.data, world_chars=4_000_000, reasoning_max_steps=2, reasoning_max_operand=11),
        eval=EvalConfig(tokens=32768, knowledge_questions=100, reasoning_problems=32, samples=8, pass_k=4),
    )


def _small_pretrain() -> RunConfig:
    # About twice tiny's model on tiny's recipe and token budget, with problems of up to three steps and
    # operands up to 9: harder problems leave the mid-trained model more to learn, so RL has room to find more
    # than on two-step ones (BENCHMARKS.md, "Preset sizing notes").
    tiny = _tiny_pretrain()
    return replace(
        tiny,
        data=replace(tiny.data, reasoning_max_steps=3, reasoning_max_operand=9),
        eval=replace(
            tiny.eval, tokens=65536, knowledge_questions=200, reasoning_problems=64, max_new_tokens=72
        ),
    )


def _paper_pretrain() -> RunConfig:
    return RunConfig(
        data=DataConfig(seq_len=4096),
        train=TrainConfig(
            max_steps=30000,
            batch_size=4096,
            micro_batch=4,
            lr=3e-4,
            final_lr=3e-4,
            warmup_steps=2000,
            decay_fraction=0.0,
            checkpoint_every=500,
            log_every=10,
        ),
    )


_PRETRAIN: dict[str, Callable[[], RunConfig]] = {
    "tiny": _tiny_pretrain,
    "tiny-moe": _cpu_pretrain,
    "small": _small_pretrain,
    **dict.fromkeys(PAPER_PRESETS, _paper_pretrain),
}


# -- mid-training ----------------------------------------------------------------------------------------

# Mid-training steps where a third of pre-training is too short: whether a seed learns to copy a problem's
# numbers, and then how sure it is of them and of the arithmetic, depends on the number of updates, and RL
# needs a mid-trained model that already solves a fair share of problems (docs/method.md §9; the runs behind
# it: BENCHMARKS.md, "Preset sizing notes"). Sequences twice as long at half the batch: 1024 tokens a step.
_MIDTRAIN_STEPS = {"tiny": 1200, "small": 1200}


def _midtrain(pre: RunConfig, max_steps: int | None) -> RunConfig:
    """The pre-training recipe with longer sequences, the LR decaying from the pre-training LR to a tenth and,
    for the paper's 16384-token contexts, RoPE base 1e4 -> 1e6; ``max_steps`` None: a third of pre-training's."""
    seq, train = pre.data.seq_len, pre.train
    steps = max_steps if max_steps is not None else max(1, train.max_steps // 3)
    rope_theta = pre.model.rope_theta
    if seq < 4096:
        batch_size = max(1, train.batch_size // 2)
        micro_batch = min(train.micro_batch, batch_size)
        # The paper raises the base for 16K contexts. At a few hundred tokens a new base serves nothing and
        # re-teaches every positional circuit the small model has (the previous-token heads copying relies
        # on); the CPU presets keep pre-training's (docs/method.md §9; BENCHMARKS.md, "Preset sizing notes").
    else:
        batch_size, micro_batch = 1024, 1  # 16M tokens per batch at 16384 tokens per sequence
        rope_theta = 1e6
    return replace(
        pre,
        model=replace(pre.model, rope_theta=rope_theta),
        # Each document attends to itself only (docs/method.md §9): a problem's solution copies from its own
        # question, not from another problem that shares the window.
        data=replace(pre.data, seq_len=seq * 2 if seq < 4096 else 16384, document_attention=True),
        train=replace(
            train,
            final_lr=train.lr / 10,
            warmup_steps=0,
            decay_fraction=1.0,
            max_steps=steps,
            eval_every=max(1, steps // 2),  # knowledge/reasoning curves along mid-training
            batch_size=batch_size,
            micro_batch=micro_batch,
        ),
    )


# -- RL --------------------------------------------------------------------------------------------------

# RL (docs/method.md §5.3, §6): GRPO, no KL, constant LR, temperature 1.0; the optimizer runs on train.*.
# Small presets use far fewer prompts per step and a much larger LR than the paper's 1e-6, which is tuned
# for billion-parameter models. Four mini-batch updates per rollout batch make the ratio differ from 1 so
# that clip-higher acts (docs/method.md §5.3); verl's DAPO recipe uses 16 at 128 prompts x 16 samples.


def _rl_recipe(
    max_steps: int, lr: float, checkpoint_every: int, rl: RLConfig, held_out: EvalConfig
) -> RunConfig:
    """An RL preset: ``max_steps`` at the constant ``lr``, no warmup, no weight decay, a log line every step;
    ``held_out`` is sampled as rollouts are (T = 1, no nucleus), so the evaluation scores the policy RL trains."""
    train = TrainConfig(
        max_steps=max_steps,
        lr=lr,
        final_lr=lr,
        warmup_steps=0,
        decay_fraction=0.0,
        weight_decay=0.0,
        grad_clip=1.0,
        checkpoint_every=checkpoint_every,
        log_every=1,
    )
    return RunConfig(train=train, rl=rl, eval=replace(held_out, temperature=1.0, top_p=1.0))


def _tiny_rl() -> RunConfig:
    return _rl_recipe(
        max_steps=30,
        # Adam's first updates move every weight by about lr whatever its gradient, which a ~1M-parameter
        # policy does not survive at pre-training LRs; 2e-5 is the largest rate that still gained in a sweep
        # (BENCHMARKS.md, "Preset sizing notes").
        lr=2e-5,
        checkpoint_every=10,
        # Problems of at most two steps with operands up to 11, as in pre-/mid-training.
        rl=RLConfig(
            prompts_per_step=8,
            group_size=16,
            minibatches=4,
            micro_batch=64,
            max_new_tokens=48,  # a retold two-step solution is at most about 46 tokens
            max_rounds=8,
            eval_every=0,
            train_problems=512,
            task_max_steps=2,
            task_max_operand=11,
        ),
        # 32 samples per problem: Avg@32 and a Pass@k curve up to k = 32 (docs/method.md §7); mid-training's
        # evaluation copies these settings.
        held_out=EvalConfig(reasoning_problems=64, samples=32, pass_k=32, max_new_tokens=48),
    )


def _small_rl() -> RunConfig:
    # tiny's RL on small's problems (three steps, operands up to 9), with room for their longer solutions;
    # 128 held-out problems.
    tiny = _tiny_rl()
    return replace(
        tiny,
        # a retold three-step solution: up to ~65 tokens
        rl=replace(tiny.rl, task_max_steps=3, task_max_operand=9, max_new_tokens=72),
        eval=replace(tiny.eval, reasoning_problems=128, max_new_tokens=72),
    )


def _paper_rl() -> RunConfig:
    # The paper's recipe: 128 prompts x 16 samples, lr 1e-6, 1000 steps, 8K responses; Avg@128 / Pass@64.
    return _rl_recipe(
        max_steps=1000,
        lr=1e-6,
        checkpoint_every=50,
        rl=RLConfig(
            prompts_per_step=128,
            group_size=16,
            minibatches=16,
            micro_batch=8,
            max_new_tokens=8192,
            eval_every=100,
            backend="vllm",
        ),
        held_out=EvalConfig(reasoning_problems=128, samples=128, pass_k=64, max_new_tokens=8192),
    )


_RL: dict[str, Callable[[], RunConfig]] = {"tiny": _tiny_rl, "tiny-moe": _tiny_rl, "small": _small_rl}


def stage_defaults(stage: str, preset: str) -> RunConfig:
    """The defaults of ``stage`` for ``preset``: a new, not yet validated ``RunConfig``. A preset without a
    recipe of its own gets the plain field defaults (pre-/mid-training) or the paper's RL recipe."""
    pretrain = _PRETRAIN.get(preset, RunConfig)
    if stage == "pretrain":
        cfg = pretrain()
    elif stage == "midtrain":
        cfg = _midtrain(pretrain(), _MIDTRAIN_STEPS.get(preset))
        # Reasoning after mid-training is measured exactly as RL measures its starting point (the same
        # problems, samples, sampling and lengths), so the mid-trained numbers are RL's "initial" ones.
        rl = _RL.get(preset, _paper_rl)().eval
        same = ("reasoning_problems", "samples", "pass_k", "temperature", "top_p", "max_new_tokens")
        cfg = replace(cfg, eval=replace(cfg.eval, **{name: getattr(rl, name) for name in same}))
    elif stage == "rl":
        cfg = _RL.get(preset, _paper_rl)()
    else:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    return replace(cfg, stage=stage, model=replace(cfg.model, preset=preset))


def resolve(
    stage: str,
    preset: str,
    *,
    file: str | Path | None = None,
    overrides: list[tuple[str, str]] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Stage defaults for the preset, then ``base`` (a mapping), the file, then overrides; validated."""
    config.ModelConfig(preset=preset).validate()  # an unknown preset is reported before anything else
    cfg = stage_defaults(stage, preset)
    if base:
        config.apply_mapping(cfg, base, "base configuration")
    if file is not None:
        data = config.load_file(file)
        # The command decides the stage; a file written for another stage is refused rather than mixed in.
        if "stage" in data and data["stage"] != stage:
            raise config.ConfigError(
                f"config file {str(file)!r} is for stage {data['stage']!r}, not {stage!r} (the command)"
            )
        config.apply_mapping(cfg, data, str(file))
    for key, value in overrides or []:
        if key == "stage" and value != stage:
            raise config.ConfigError(f"--stage {value!r} does not match the command {stage!r}")
        config.set_field(cfg, key, value)
    cfg.validate()
    max_positions = config.model_max_positions(cfg)
    if max_positions is not None:
        origin = f"{cfg.model.init}/config.json" if cfg.model.init else f"preset {cfg.model.preset!r}"
        config.check_lengths(cfg, max_positions, origin)
    return cfg
