"""Typed run configuration: sections of dataclasses, file + ``--section.field VALUE`` overrides, validation.

A run's configuration is resolved (``rlready.recipes.resolve``) in this order: the stage's defaults for the
preset, then a YAML/TOML file (``--config``), then command-line overrides. The resolved configuration is saved in the run directory; a run
directory whose saved configuration differs is refused (``--overwrite`` replaces it explicitly).

Written here rather than taken from a config library (hydra, omegaconf, tyro) to keep the dependency set to
the training stack and to give one-line errors for every bad field, which the CLI promises.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlready.data.world import GENERATOR_VERSION
from rlready.losses.schedules import SCHEDULES, Constant, Schedule, parse_schedule, weighting_at
from rlready.losses.schemes import check_k

STAGES = ("pretrain", "midtrain", "rl")


class ConfigError(ValueError):
    """A configuration value, file or field is invalid (reported in one line by the CLI)."""


# Upper bounds, generous but finite, so that a typo such as an extra three zeros is a one-line error before
# anything is written instead of an allocation failure (or hours of work) deep inside a stage.
#
# Seeds go to torch.manual_seed (any 64-bit value), numpy.random.default_rng (non-negative) and, for the
# legacy numpy and the Hugging Face helpers, numpy.random.seed, which takes [0, 2**32 - 1]: the range every
# consumer accepts. (The RL stage also seeds evaluation with seed + 1, which torch still accepts.)
MAX_SEED = 2**32 - 1
# The tokenizers BPE trainer reserves ~70 bytes per requested token up front (1e9 asks for 70 GB and aborts
# the process); real vocabularies stop near 262k (Gemma 3), so 2**20 is 4x that for ~75 MB.
MAX_VOCAB_SIZE = 1 << 20
# Sequences per batch, step or sampling call, and problems per evaluation: each sizes a tensor or a list
# built at once. The paper's recipe uses at most 4096 (pre-training batch) and 128 x 16 (RL rollouts);
# 2**20 sequences of 4096 tokens is already 4B tokens in one batch.
MAX_ITEMS = 1 << 20
# Operations per arithmetic problem: each adds a sentence to the prompt and an equation to the solution
# (~20 tokens), so beyond ~1000 one problem outgrows the largest presets' 32768 positions, and generating
# the problems takes time in proportion.
MAX_PROBLEM_STEPS = 1024
# Characters of synthetic text generated per stage, held in memory as one string list and then as tokens.
MAX_WORLD_CHARS = 1 << 32
# Reward worker processes; more than any one machine has cores.
MAX_WORKERS = 1024


@dataclass
class ModelConfig:
    preset: str = "tiny"
    init: str | None = None  # a local Hugging Face causal-LM directory to start from
    rope_theta: float | None = None  # None: the preset's 1e4, or the value saved with --init
    dtype: str = "float32"  # parameter dtype; bf16 compute comes from train.autocast

    def validate(self) -> None:
        from rlready.models.presets import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        if self.rope_theta is not None and not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ConfigError(f"model.rope_theta must be a positive number, got {self.rope_theta!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be float32 or bfloat16, got {self.dtype!r}")


@dataclass
class DataConfig:
    path: str | None = None  # .txt/.jsonl/.parquet file, folder, or hub dataset name; None: synthetic world
    text_field: str = "text"
    tokenizer: str | None = None  # an existing tokenizer directory; None: --init's, or train a BPE one
    vocab_size: int = 2048  # for a trained tokenizer
    seq_len: int = 256
    world_seed: int = 0  # the synthetic world is the same for every configuration of a study
    world_chars: int = 2_000_000  # characters of generated training text per stage
    reasoning_max_steps: int = 3  # difficulty of the world's arithmetic problems (operations per problem)
    reasoning_max_operand: int = 20  # ... and the largest operand
    # The synthetic world's generator. Recorded in a run's config.json, so that a run or study made on an
    # earlier world's text is refused on resume instead of continued on other data; only this one is made.
    world_version: int = GENERATOR_VERSION
    cache_dir: str | None = None  # token shards; None: $RLREADY_CACHE or ~/.cache/rlready
    # Each packed document attends to itself only (position ids restart after every EOS): mid-training's
    # recipe (docs/method.md §9). Off, windows attend across EOS, as GPT-style pre-training packs them.
    document_attention: bool = False

    def validate(self) -> None:
        _positive("data.seq_len", self.seq_len)
        _positive("data.world_chars", self.world_chars)
        _positive("data.reasoning_max_steps", self.reasoning_max_steps)
        if self.reasoning_max_operand < 2:
            raise ConfigError(f"data.reasoning_max_operand must be >= 2, got {self.reasoning_max_operand}")
        if self.vocab_size < 258:  # rlready.data.tokenizer.train_tokenizer's minimum
            raise ConfigError(
                f"data.vocab_size must be >= 258 (256 bytes + EOS + PAD of byte-level BPE), got {self.vocab_size}"
            )
        _at_most("data.vocab_size", self.vocab_size, MAX_VOCAB_SIZE)
        _at_most("data.world_chars", self.world_chars, MAX_WORLD_CHARS)
        _at_most("data.reasoning_max_steps", self.reasoning_max_steps, MAX_PROBLEM_STEPS)
        if self.world_version != GENERATOR_VERSION:
            raise ConfigError(
                f"data.world_version {self.world_version} cannot be generated: this rlready makes world "
                f"version {GENERATOR_VERSION} (use the rlready that made the run)"
            )


# The knobs that follow a schedule over training, and all the fields that define the objective (chunk_size
# only trades memory for speed): what a configuration of a study sets and records.
SCHEDULED_KNOBS = ("beta", "lam_head", "lam_tail")
LOSS_KNOBS = (*SCHEDULED_KNOBS, "k")


@dataclass
class LossConfig:
    """The loss knobs (docs/method.md §3, §4.6): ``beta``, ``lam_head``, ``lam_tail`` are schedules over training
    progress (a constant is one), given as a number or ``linear|cosine:START:END`` and parsed here, once; each
    is saved as the text it was given."""

    beta: Schedule = Constant(0.0)
    lam_head: Schedule = Constant(0.0)
    lam_tail: Schedule = Constant(0.0)
    # The head's size (docs/method.md §1): an int >= 1 is a count (capped at V), a float in (0, 1) a fraction
    # of the vocabulary, resolved by the loss once V is known (rlready.losses.schemes.head_size).
    k: int | float = 100
    chunk_size: int | None = None  # fused loss token chunk; None: Liger's rule (see losses/fused_linear.py)

    def __post_init__(self) -> None:
        self._parse_knobs()

    def _parse_knobs(self) -> None:
        for name in SCHEDULED_KNOBS:
            setattr(self, name, _schedule(f"loss.{name}", getattr(self, name)))

    def validate(self) -> None:
        self._parse_knobs()  # a knob assigned as text after construction
        _check_k("loss.k", self.k)
        if self.chunk_size is not None:
            _positive("loss.chunk_size", self.chunk_size)
            _at_most("loss.chunk_size", self.chunk_size, MAX_ITEMS)

    @property
    def scheduled(self) -> bool:
        """Whether a knob changes over training; otherwise one weighting holds for the whole run."""
        return not all(isinstance(getattr(self, name), Constant) for name in SCHEDULED_KNOBS)

    def weighting(self, progress: float):  # -> rlready.losses.TokenWeighting
        """The per-token weighting at ``progress``, the fraction of training done."""
        return weighting_at(progress, self.beta, self.lam_head, self.lam_tail, self.k)

    def knobs(self) -> dict[str, Any]:
        """``{beta, lam_head, lam_tail, k}`` as saved (schedules as their text)."""
        return {name: _plain(getattr(self, name)) for name in LOSS_KNOBS}

    def to_overrides(self) -> list[tuple[str, str]]:
        """The knobs as ``loss.*`` overrides, which resolve to the same knobs with the same saved text."""
        return [(f"loss.{name}", str(value)) for name, value in self.knobs().items()]


@dataclass
class TrainConfig:
    max_steps: int = 300
    tokens: int = 0  # token budget; when > 0 it sets max_steps = ceil(tokens / (batch_size * data.seq_len))
    batch_size: int = 16  # global batch, in sequences of data.seq_len tokens
    micro_batch: int = 16  # sequences per forward/backward on one process (gradient accumulation)
    lr: float = 3e-3
    final_lr: float = 3e-4  # reached at the end of the decay
    warmup_steps: int = 30
    decay_fraction: float = 0.2  # warmup-stable-decay: the last fraction of steps decays linearly
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # held-out perplexity/entropy every N steps (0: only at the end)
    autocast: str = "auto"  # auto: bf16 where the device supports it (CUDA), else off
    fsdp: bool = False  # FSDP2 fully_shard instead of DDP (models that do not fit one device)
    max_bad_steps: int = 3  # consecutive non-finite steps before the run stops

    def validate(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "micro_batch",
            "keep_checkpoints",
            "log_every",
            "max_bad_steps",
        ):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("batch_size", "micro_batch"):
            _at_most(f"train.{name}", getattr(self, name), MAX_ITEMS)
        for name in ("warmup_steps", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "final_lr", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"train.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if not (0.0 <= self.weight_decay < 1.0):
            raise ConfigError(f"train.weight_decay must be in [0, 1), got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ConfigError(f"train.autocast must be auto, bf16 or off, got {self.autocast!r}")


@dataclass
class EvalConfig:
    tokens: int = 65536  # held-out tokens for perplexity / entropy
    knowledge_questions: int = 100
    reasoning_problems: int = 32
    samples: int = 8  # n samples per problem for Pass@k
    pass_k: int = 4
    temperature: float = 0.7  # docs/method.md §7: Pass@k sampling at T=0.7, top-p 0.95
    top_p: float = 0.95
    max_new_tokens: int = 48

    def validate(self) -> None:
        for name in ("tokens", "samples", "pass_k", "max_new_tokens"):
            _positive(f"eval.{name}", getattr(self, name))
        if self.pass_k > self.samples:
            raise ConfigError(f"eval.pass_k ({self.pass_k}) must be <= eval.samples ({self.samples})")
        for name in ("knowledge_questions", "reasoning_problems"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("samples", "knowledge_questions", "reasoning_problems"):
            _at_most(f"eval.{name}", getattr(self, name), MAX_ITEMS)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"eval.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ConfigError(f"eval.temperature must be >= 0, got {self.temperature}")


@dataclass
class RLConfig:
    """The RL stage (docs/method.md §5.3). Optimizer, steps and checkpoints come from
    ``train``; held-out Avg@k / Cons@k / Pass@k settings from ``eval``."""

    data: str | None = None  # GSM8K/MATH-style JSONL; None: the synthetic world's reasoning problems
    reward: str = "arithmetic"  # arithmetic | gsm8k | math (rlready.rl.rewards registry) | MODULE:FUNCTION
    train_problems: int = 4096  # size of the synthetic prompt pool
    task_max_steps: int = 3  # difficulty of the synthetic tasks (ReasoningConfig.max_steps / max_operand)
    task_max_operand: int = 20
    prompts_per_step: int = 128  # informative prompt groups per step (paper: 128)
    group_size: int = 16  # samples per prompt (paper: 16)
    minibatches: int = 4  # optimizer updates per rollout batch (1: strictly on-policy, the clip never acts)
    micro_batch: int = 64  # sequences per forward/backward (memory only; does not change the update)
    max_rounds: int = 8  # dynamic-sampling generation rounds per step before training on what was kept
    max_new_tokens: int = 64  # maximum response length
    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    adv_eps: float = 1e-6
    std_tol: float = 1e-6  # groups with reward std below it are zero-variance (dropped)
    overlong_buffer: int = 0  # DAPO soft overlong penalty over the last N tokens before the limit (0: off)
    overlong_penalty: float = 1.0  # the penalty at the limit
    mask_truncated: bool = False  # exclude truncated responses from the loss (DAPO overlong filtering)
    reward_timeout_s: float = 10.0
    reward_workers: int = 1
    backend: str = (
        "cached"  # cached (lean KV-cache sampler) | hf (transformers generate) | vllm (GPU, optional)
    )
    gen_batch: int = 256  # sequences per sampling call (cached and hf backends)
    eval_every: int = 0  # held-out Avg@k/Cons@k/Pass@k every N steps (0: only before and after)
    entropy_window: int = 20  # steps over which an entropy collapse is detected
    entropy_drop: float = 0.5  # warn when entropy falls below (1 - this) x its maximum within the window

    def validate(self) -> None:
        if self.group_size < 2:
            raise ConfigError(
                f"rl.group_size must be >= 2 (GRPO compares samples of a prompt), got {self.group_size}"
            )
        for name in (
            "train_problems",
            "task_max_steps",
            "prompts_per_step",
            "minibatches",
            "micro_batch",
            "max_rounds",
            "max_new_tokens",
            "reward_workers",
            "gen_batch",
            "entropy_window",
        ):
            _positive(f"rl.{name}", getattr(self, name))
        for name in ("train_problems", "prompts_per_step", "group_size", "micro_batch", "gen_batch"):
            _at_most(f"rl.{name}", getattr(self, name), MAX_ITEMS)
        # One generation round samples prompts_per_step x group_size sequences.
        if self.prompts_per_step * self.group_size > MAX_ITEMS:
            raise ConfigError(
                f"rl.prompts_per_step x rl.group_size must be <= {MAX_ITEMS} sequences per round, got "
                f"{self.prompts_per_step} x {self.group_size}"
            )
        _at_most("rl.task_max_steps", self.task_max_steps, MAX_PROBLEM_STEPS)
        _at_most("rl.reward_workers", self.reward_workers, MAX_WORKERS)
        if self.task_max_operand < 2:
            raise ConfigError(f"rl.task_max_operand must be >= 2, got {self.task_max_operand}")
        if self.minibatches > self.prompts_per_step:
            raise ConfigError(
                f"rl.minibatches ({self.minibatches}) must be <= rl.prompts_per_step ({self.prompts_per_step})"
            )
        if self.eval_every < 0 or self.overlong_buffer < 0:
            raise ConfigError("rl.eval_every and rl.overlong_buffer must be >= 0")
        if self.overlong_buffer >= self.max_new_tokens:
            raise ConfigError(
                f"rl.overlong_buffer ({self.overlong_buffer}) must be < rl.max_new_tokens ({self.max_new_tokens})"
            )
        if not self.temperature > 0:
            raise ConfigError(f"rl.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.eps_low < 1.0 or self.eps_high < 0.0:
            raise ConfigError(
                f"rl.eps_low must be in [0, 1) and rl.eps_high >= 0, got {self.eps_low}, {self.eps_high}"
            )
        for name in ("adv_eps", "std_tol", "overlong_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rl.{name} must be >= 0, got {getattr(self, name)}")
        if not self.reward_timeout_s > 0:
            raise ConfigError(f"rl.reward_timeout_s must be > 0, got {self.reward_timeout_s}")
        if not 0.0 < self.entropy_drop < 1.0:
            raise ConfigError(f"rl.entropy_drop must be in (0, 1), got {self.entropy_drop}")
        if self.backend not in ("cached", "hf", "vllm"):
            raise ConfigError(f"rl.backend must be cached, hf or vllm, got {self.backend!r}")
        from rlready.rl.rewards import available_rewards, get_reward

        if ":" in self.reward:  # a user's verifier, MODULE:FUNCTION
            try:
                get_reward(self.reward)
            except ValueError as err:
                raise ConfigError(f"rl.reward: {err}") from None
        elif self.reward not in available_rewards():
            raise ConfigError(
                f"rl.reward must be one of {', '.join(available_rewards())} or MODULE:FUNCTION, "
                f"got {self.reward!r}"
            )
        elif self.data is None and self.reward != "arithmetic":
            raise ConfigError(
                f"rl.reward {self.reward!r} needs rl.data (a JSONL file); the synthetic tasks use arithmetic"
            )


@dataclass
class LogConfig:
    tensorboard: bool = False
    wandb: bool = False  # offline unless WANDB_MODE says otherwise
    progress: str = "auto"  # auto: a bar on a terminal, log lines otherwise; bar; lines

    def validate(self) -> None:
        if self.progress not in ("auto", "bar", "lines"):
            raise ConfigError(f"log.progress must be auto, bar or lines, got {self.progress!r}")


@dataclass
class RunConfig:
    stage: str = "pretrain"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def validate(self) -> RunConfig:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, {MAX_SEED}] (2**32 - 1, numpy's range), got {self.seed}")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        if self.train.tokens < 0:
            raise ConfigError(f"train.tokens must be >= 0, got {self.train.tokens}")
        if self.train.tokens:
            self.train.max_steps = max(
                1, math.ceil(self.train.tokens / (self.train.batch_size * self.data.seq_len))
            )
        if self.train.batch_size % self.train.micro_batch and self.train.micro_batch < self.train.batch_size:
            raise ConfigError(
                f"train.batch_size ({self.train.batch_size}) must be a multiple of train.micro_batch "
                f"({self.train.micro_batch})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


def _plain(value: Any) -> Any:
    """``value`` as config.json holds it: sections as mappings, schedules as the text they were given."""
    if isinstance(value, SCHEDULES):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _schedule(name: str, raw: Any) -> Schedule:
    """A loss knob from a number, its text or a schedule; a ConfigError naming ``name`` otherwise."""
    try:
        # A number is read through its str(), the text config.json has always recorded for it (YAML 0: "0").
        return parse_schedule(str(raw) if isinstance(raw, (int, float)) else raw)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _at_most(name: str, value: int, limit: int) -> None:
    if value > limit:
        raise ConfigError(f"{name} must be <= {limit}, got {value}")


# -- the world an --init model was trained on ---------------------------------------------------------------


def init_world_mismatch(cfg: RunConfig) -> str | None:
    """A one-line note when ``--init`` is the ``final/`` of an rlready run on another synthetic world than this
    run's (generator version or world seed); None when they match or nothing is recorded to compare (a model
    not written by an rlready run, or a run on ``--data.path`` text or ``--rl.data`` tasks). Not an error:
    continuing from another world's model is a legitimate experiment, but a chain of stages made across an
    upgrade of rlready mixes worlds without it showing anywhere else (the study compares its stages' settings
    itself)."""
    if not cfg.model.init or cfg.data.path or (cfg.stage == "rl" and cfg.rl.data):
        return None
    try:
        saved = json.loads((Path(cfg.model.init).parent / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    data = saved.get("data") if isinstance(saved, dict) and "stage" in saved else None
    if not isinstance(data, dict) or data.get("path"):
        return None
    theirs = (data.get("world_version"), data.get("world_seed", 0))
    ours = (cfg.data.world_version, cfg.data.world_seed)
    if theirs == ours:
        return None
    version = "an unrecorded version (before 6)" if theirs[0] is None else f"version {theirs[0]}"
    return (
        f"--init {cfg.model.init} was trained on synthetic world {version}, seed {theirs[1]}; this run makes "
        f"world version {ours[0]}, seed {ours[1]}: the two stages see different worlds"
    )


# -- lengths against the model's context ----------------------------------------------------------------


def model_max_positions(cfg: RunConfig) -> int | None:
    """The model's ``max_position_embeddings``: from ``--init``'s config.json, else from the preset.

    Reads JSON only (no model is built). None when the --init directory or its config.json is missing,
    unreadable or has no such field: the stage's own check of --init then reports the directory.
    """
    if cfg.model.init:
        try:
            data = json.loads((Path(cfg.model.init) / "config.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        value = data.get("max_position_embeddings") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return None
        return value
    from rlready.models.presets import PRESETS

    preset = PRESETS.get(cfg.model.preset)
    return preset.max_position_embeddings if preset is not None else None


def check_lengths(cfg: RunConfig, max_positions: int, origin: str) -> None:
    """Sequence and generation lengths of ``cfg.stage`` must fit ``max_positions`` (from ``origin``).

    A training window is ``data.seq_len`` positions. Generation (evaluation; RL rollouts) puts the prompt
    before at most ``max_new_tokens`` new tokens, so those must leave at least one position for the prompt;
    the prompts' own lengths are known only once they are tokenized. Positions past the maximum do not fail
    in the model (RoPE extends to any position): they give untrained positions and minutes of wasted
    generation, hence the check here.
    """
    where = f"the model's max_position_embeddings ({max_positions}, {origin})"
    if cfg.stage != "rl" and cfg.data.seq_len > max_positions:
        raise ConfigError(f"data.seq_len must be <= {where}, got {cfg.data.seq_len}")
    names = ("rl.max_new_tokens", "eval.max_new_tokens") if cfg.stage == "rl" else ("eval.max_new_tokens",)
    for name in names:
        section, attr = name.split(".")
        value = getattr(getattr(cfg, section), attr)
        if value >= max_positions:
            raise ConfigError(f"{name} plus the prompt must fit {where}, got {value}")


# -- parsing ---------------------------------------------------------------------------------------------


def _convert(name: str, raw: Any, tp: Any) -> Any:
    """Convert ``raw`` (a string from the command line, or a YAML/TOML value) to the annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args == [int, float]:
            return _int_or_float(name, raw)
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return _convert(name, raw, args[0])
    if raw is None:
        raise ConfigError(f"{name} may not be empty")
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ConfigError(f"{name} must be an integer, got {raw!r}")
        try:
            return int(raw) if not isinstance(raw, str) else int(raw.replace("_", ""))
        except (TypeError, ValueError):
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            if not value.is_integer():
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            return int(value)
    if tp is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{name} must be a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {raw!r}")
        return value
    if tp is Schedule:
        return _schedule(name, raw)
    if tp is str:
        if isinstance(raw, (dict, list)):
            raise ConfigError(f"{name} must be a string, got {raw!r}")
        return str(raw)
    raise ConfigError(f"{name}: unsupported type {tp!r}")  # pragma: no cover - a programming error


def _check_k(name: str, k: Any) -> None:
    error = check_k(k, name)
    if error:
        raise ConfigError(error)
    if isinstance(k, int):
        _at_most(name, k, MAX_VOCAB_SIZE)  # a top-k over the vocabulary


def parse_k(name: str, raw: Any) -> int | float:
    """A head size ``k`` from a file or the command line, checked (docs/method.md §1): an int >= 1 is a count,
    a float in (0, 1) a fraction of the vocabulary; anything else is a ConfigError naming ``name``."""
    try:
        k = _int_or_float(name, raw)
    except ConfigError:
        k = raw  # not a number: the check below says what k must be
    _check_k(name, k)
    return k


def _int_or_float(name: str, raw: Any) -> int | float:
    """An ``int | float`` field (``loss.k``): the kind as given, so that the section's own check can tell a
    count from a fraction. Text reads as an int when it is an integer literal (``100``, ``1_000``) and as a
    float otherwise (``0.05``, ``1.0``, ``1e3``); NaN and infinities come through for that check to refuse."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{name} must be a number, got {raw!r}")
    if not isinstance(raw, str):
        return raw
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


def set_field(cfg: RunConfig, dotted: str, raw: Any) -> None:
    """Set ``section.field`` (or a top-level field such as ``seed``) from a raw value."""
    parts = dotted.split(".")
    sections = _sections()
    if len(parts) == 1:
        hints = typing.get_type_hints(RunConfig)
        if parts[0] in sections or parts[0] not in hints:
            raise ConfigError(f"unknown config field {dotted!r}")
        setattr(cfg, parts[0], _convert(dotted, raw, hints[parts[0]]))
        return
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"unknown config field {dotted!r} (sections: {', '.join(sections)})")
    section_cls = sections[parts[0]]
    hints = typing.get_type_hints(section_cls)
    if parts[1] not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(section_cls))
        raise ConfigError(f"unknown config field {dotted!r} ({parts[0]} has: {known})")
    setattr(getattr(cfg, parts[0]), parts[1], _convert(dotted, raw, hints[parts[1]]))


def apply_mapping(cfg: RunConfig, data: dict[str, Any], origin: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, raw in value.items():
                set_field(cfg, f"{key}.{sub}", raw)
        else:
            set_field(cfg, str(key), value)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML configuration file (chosen by extension) into a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {str(p)!r}: {err}") from None
    if p.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"malformed TOML in {str(p)!r}: {err}") from None
    elif p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"malformed YAML in {str(p)!r}: {first}") from None
    else:
        raise ConfigError(f"config file {str(p)!r} must end in .yaml, .yml or .toml")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return data


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``['--loss.beta', '-0.25', '--seed=3']`` -> ``[('loss.beta', '-0.25'), ('seed', '3')]``."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r} (overrides look like --section.field VALUE)")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value")
            i += 1
            value = args[i]
        out.append((key, value))
        i += 1
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    apply_mapping(cfg, data, "saved configuration")
    return cfg.validate()


def dumps(cfg: RunConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
