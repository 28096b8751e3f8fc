"""Pre-training and mid-training: next-token prediction with the shaped objective (docs/method.md §5.1–5.2).

Data flows top to bottom: tokenizer -> token shards -> model -> the training loop (fused shaped loss on
the final hidden states and LM head: the ``[tokens, V]`` logits are never materialised) -> ``final/`` in
Hugging Face format -> held-out evaluation in ``eval.json``.

The two stages differ only in their defaults (``defaults.py``) and in mid-training starting from
``--init``: longer sequences, RoPE base 1e6 written into the saved config, LR decaying to a tenth, and the
reasoning-heavy mix of the synthetic world.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlready.config import ConfigError, RunConfig, init_world_mismatch
from rlready.data.loader import PackedBatches, check_document_attention, document_positions
from rlready.errors import TrainingError
from rlready.losses import TokenWeighting, fused_linear_shaped_cross_entropy
from rlready.train import checkpoint, dist, loop
from rlready.train.loop import StopFlag
from rlready.train.rundir import RunLock, check_run_dir, write_json
from rlready.train.schedule import wsd_lr

# -- data -------------------------------------------------------------------------------------------------


@dataclass
class LMData:
    tokenizer: Any
    train: np.ndarray
    heldout: np.ndarray
    world: Any  # the synthetic World, or None for real data
    trained_tokenizer: bool = False  # trained by this run: saved into its directory


def cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.data.cache_dir or os.environ.get("RLREADY_CACHE") or Path.home() / ".cache" / "rlready")


def _heldout_world_text(world: Any, stage: str, n_chars: int) -> list[str]:
    """Held-out documents in the stage's mix, built only from the world's evaluation splits."""
    mix = world.config.pretrain_mix if stage == "pretrain" else world.config.midtrain_mix
    lo, hi = world.config.sentences_per_document
    docs = world.language_documents(max(2, int(n_chars * mix.language / (60 * (lo + hi) / 2))))
    # Easy worlds have few distinct problems; a held-out set of up to 200 is plenty for perplexity.
    problems = world.reasoning_problems(max(4, min(200, int(n_chars * mix.reasoning / 150))), split="eval")
    questions = world.knowledge_questions("eval")
    docs += [p.prompt + p.solution for p in problems]
    docs += [q.prompt + q.answer for q in questions[: max(4, int(n_chars * mix.knowledge / 40))]]
    return docs


@dataclass
class Inputs:
    """What a run reads besides its own directory, checked before the directory is touched."""

    source: Any  # rlready.data.sources.TextSource, or None for the synthetic world
    tokenizer: Any  # the tokenizer of data.tokenizer, or None
    init_model: nn.Module | None  # the model of --init, or None


def check_inputs(cfg: RunConfig, device: torch.device) -> Inputs:
    """Open the data, tokenizer and ``--init`` model so that a bad one fails before ``--out`` is written.

    The first document is read, so an empty source or a missing text field is reported here too.
    """
    from rlready.data import sources, tokenizer
    from rlready.models import load_model
    from rlready.models.io import check_tokenizer_fits

    src = None
    if cfg.data.path:
        src = sources.open_source(cfg.data.path, text_field=cfg.data.text_field)
        next(iter(src.documents()))  # raises DataSourceError when there is no document
    tok = tokenizer.load_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else None
    model = None
    if cfg.model.init:
        model = load_model(cfg.model.init, dtype=param_dtype(cfg), device=device)
        if tok is not None:
            check_tokenizer_fits(tok, model)
    return Inputs(src, tok, model)


def world_config(cfg: RunConfig) -> Any:
    """The synthetic world of a run: one seed and difficulty for every stage of a study."""
    from rlready.data.reasoning import ReasoningConfig
    from rlready.data.world import WorldConfig

    difficulty = ReasoningConfig(
        max_steps=cfg.data.reasoning_max_steps, max_operand=cfg.data.reasoning_max_operand
    )
    return WorldConfig(seed=cfg.data.world_seed, reasoning=difficulty)


def load_data(cfg: RunConfig, resumed: Path | None, d: dist.Dist, inputs: Inputs) -> LMData:
    """Tokenizer, training tokens and held-out tokens, without writing to the run directory.

    Every document is read (and tokenized into the cache) here, so bad data fails before ``--out`` is
    touched. ``resumed`` is the directory of the run being resumed, whose tokenizer is reused.
    """
    from rlready.data import shards, tokenizer, world

    stage = "midtrain" if cfg.stage == "midtrain" else "pretrain"
    the_world = None
    if inputs.source is not None:
        src = inputs.source
        identity = src.identity()
        documents = src.documents
    else:
        the_world = world.World(world_config(cfg))
        identity = world.world_identity(the_world.config, stage, n_chars=cfg.data.world_chars)

        def documents():
            return the_world.documents(stage, n_chars=cfg.data.world_chars)

    trained = False
    if inputs.tokenizer is not None:
        tok = inputs.tokenizer
    elif cfg.model.init and (Path(cfg.model.init) / "tokenizer.json").is_file():
        tok = tokenizer.load_tokenizer(cfg.model.init)
    elif resumed is not None and (resumed / "tokenizer" / "tokenizer.json").is_file():
        tok = tokenizer.load_tokenizer(resumed / "tokenizer")  # trained by an earlier attempt of this run
    else:
        # Rank 0 trains it (in memory: it is saved with the run once --out is claimed) and sends it round.
        tok = dist.broadcast_object(
            tokenizer.train_tokenizer(documents(), cfg.data.vocab_size) if d.is_main else None, d
        )
        trained = True

    if d.is_main:  # rank 0 fills the cache, the others then map it
        tokens = shards.cached_tokens(documents(), tok, cache_dir(cfg), identity)
    dist.barrier(d)
    if not d.is_main:
        tokens = shards.cached_tokens(documents(), tok, cache_dir(cfg), identity)

    if the_world is not None:
        eos = tok.eos_token_id
        ids: list[int] = []
        for doc in _heldout_world_text(the_world, stage, 4 * cfg.eval.tokens):
            ids.extend(tok(doc)["input_ids"] + [eos])
        heldout = np.asarray(ids, dtype=np.int64)
        train = tokens
    else:
        # Real data: the last tokens (at most 10%) are held out and never trained on.
        n_eval = min(cfg.eval.tokens + 1, len(tokens) // 10)
        if n_eval < cfg.data.seq_len + 1:
            raise ConfigError(f"data.path {cfg.data.path!r} is too small: {len(tokens)} tokens")
        train, heldout = tokens[:-n_eval], np.asarray(tokens[-n_eval:], dtype=np.int64)
    return LMData(tok, train, heldout, the_world, trained)


# -- model ------------------------------------------------------------------------------------------------


def param_dtype(cfg: RunConfig) -> torch.dtype:
    """``model.dtype``: the dtype of the parameters (bf16 compute comes from ``train.autocast``)."""
    return torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32


def whole_model(cfg: RunConfig, d: dist.Dist, model: nn.Module) -> nn.Module | None:
    """The trained model, whole, on rank 0 (None on the other ranks). Under FSDP it is gathered from the shards
    (collective: every rank calls this) into an unsharded model on CPU; otherwise it is ``model`` itself."""
    from rlready.models import build_model

    if not (cfg.train.fsdp and d.enabled):
        return model if d.is_main else None
    state = dist.full_model_state(model, d, fsdp=True)
    if not d.is_main:
        return None
    whole = build_model(model.config, dtype=param_dtype(cfg), device="cpu")
    whole.load_state_dict(state)
    whole.generation_config = model.generation_config
    return whole


def load_or_build_model(
    cfg: RunConfig, tok: Any, device: torch.device, init_model: nn.Module | None = None
) -> nn.Module:
    """The ``--init`` model (already loaded by ``check_inputs``, or loaded here), or a fresh one."""
    from rlready.models import build_config, build_model, load_model, set_rope_theta
    from rlready.models.io import check_tokenizer_fits

    dtype = param_dtype(cfg)
    if cfg.model.init:
        model = (
            init_model if init_model is not None else load_model(cfg.model.init, dtype=dtype, device=device)
        )
        check_tokenizer_fits(tok, model)
        if cfg.model.rope_theta is not None:
            set_rope_theta(model, cfg.model.rope_theta)
        return model
    torch.manual_seed(cfg.seed)
    config = build_config(cfg.model.preset, vocab_size=len(tok), rope_theta=cfg.model.rope_theta or 1e4)
    config.bos_token_id = config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return build_model(config, dtype=dtype, device=device)


def document_eos(cfg: RunConfig, tok: Any) -> int | None:
    """The EOS that ends a document when ``data.document_attention`` keeps documents apart, else None."""
    return tok.eos_token_id if cfg.data.document_attention else None


class ShapedLMLoss(nn.Module):
    """Decoder -> fused shaped loss. The unit that DDP/FSDP wrap, so their hooks see the whole forward.

    With ``eos`` set, each document of a packed window attends to itself only (``document_positions``).
    """

    def __init__(self, model: nn.Module, eos: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.eos = eos

    def forward(
        self, batch: torch.Tensor, weighting: TokenWeighting, chunk_size: int | None, need_stats: bool
    ):
        from rlready.models.heads import final_hidden_and_head

        inputs = batch[:, :-1]
        positions = {} if self.eos is None else {"position_ids": document_positions(inputs, self.eos)}
        h = final_hidden_and_head(self.model, inputs, **positions)
        out = fused_linear_shaped_cross_entropy(
            h.hidden,
            h.weight,
            batch[:, 1:],
            bias=h.bias,
            weighting=weighting,
            reduction="sum",
            return_stats=need_stats,
            chunk_size=chunk_size,
        )
        loss, stats = out if need_stats else (out, None)
        if h.aux_loss is not None:  # MoE load balancing: a per-token mean, scaled like the summed loss
            loss = loss + h.aux_loss * batch[:, 1:].numel()
        return loss, stats


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (norms and biases are not decayed, as is usual)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), eps=1e-8)


# -- the loop ---------------------------------------------------------------------------------------------


def run(cfg: RunConfig, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one pre-/mid-training run in ``out``; returns eval.json."""
    return loop.run_stage(cfg, out, overwrite, _setup, _train)


@dataclass
class _Setup:
    inputs: Inputs
    data: LMData
    model_device: torch.device
    lock: RunLock | None  # held by rank 0 for the run's lifetime


def _check_settings(cfg: RunConfig, world_size: int) -> None:
    if cfg.stage == "midtrain" and not cfg.model.init:
        raise ConfigError("midtrain needs --init MODEL_DIR (a pre-trained model)")
    if cfg.model.init and not Path(cfg.model.init).is_dir():
        raise ConfigError(f"--init {cfg.model.init!r} does not exist or is not a directory")
    check_document_attention(cfg)
    tc = cfg.train
    if tc.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size ({tc.batch_size}) must be divisible by the {world_size} processes"
        )
    per_rank = tc.batch_size // world_size
    if per_rank % min(tc.micro_batch, per_rank):
        raise ConfigError(
            f"per-process batch {per_rank} must be a multiple of train.micro_batch ({tc.micro_batch})"
        )


def _setup(cfg: RunConfig, out: Path, d: dist.Dist, overwrite: bool) -> _Setup | dict[str, Any]:
    """Everything that can fail on bad input, then ``--out`` claimed: until then nothing is written there."""
    _check_settings(cfg, d.world_size)
    state = check_run_dir(out, cfg, overwrite=overwrite)
    if state == "finished":
        return json.loads((out / "eval.json").read_text())
    # Under FSDP the whole model lives on rank 0 only (see dist.model_device).
    model_device = dist.model_device(d, fsdp=cfg.train.fsdp)
    inputs = check_inputs(cfg, model_device)
    data = load_data(cfg, out if state == "resume" else None, d, inputs)

    def save_tokenizer() -> None:
        if data.trained_tokenizer:
            from rlready.data.tokenizer import save_tokenizer

            save_tokenizer(data.tokenizer, out / "tokenizer", model_max_length=cfg.data.seq_len)

    lock, finished = loop.claim_on_main(out, cfg, d, overwrite=overwrite, then=save_tokenizer)
    if finished:  # another process finished this run while the inputs were read
        return json.loads((out / "eval.json").read_text())
    return _Setup(inputs, data, model_device, lock)


def _train(cfg: RunConfig, out: Path, d: dist.Dist, setup: _Setup, stop: StopFlag) -> dict[str, Any]:
    """The training loop: batch -> step -> log -> checkpoint, then ``final/`` and ``eval.json``."""
    tc, data = cfg.train, setup.data
    per_rank = tc.batch_size // d.world_size
    model = load_or_build_model(cfg, data.tokenizer, setup.model_device, setup.inputs.init_model)
    loader = PackedBatches(
        data.train, cfg.data.seq_len, per_rank, rank=d.rank, world_size=d.world_size, seed=cfg.seed
    )
    warn = loop.warner(d.is_main)
    ckpt = loop.resume(out, d, model, warn, require=("tokens", "loader"))
    if ckpt is None and (note := init_world_mismatch(cfg)):
        warn(note)
    if ckpt is not None:
        loader.load_state_dict(ckpt.state["loader"])
    step, tokens = (ckpt.step, int(ckpt.state["tokens"])) if ckpt is not None else (0, 0)
    wrapped = dist.wrap(ShapedLMLoss(model, document_eos(cfg, data.tokenizer)), d, fsdp=tc.fsdp)
    # After wrapping: FSDP2 replaces the parameters with sharded ones, which the optimizer must hold.
    optimizer = make_optimizer(model, cfg)
    if ckpt is not None:
        dist.load_optimizer_state(
            model, optimizer, lambda: checkpoint.read_optimizer_state(ckpt), d, fsdp=tc.fsdp
        )
    logger = loop.run_logger(cfg, out, step, enabled=d.is_main)
    if d.enabled:
        logger.info(
            f"{d.world_size} processes ({'FSDP2' if tc.fsdp else 'DDP'}), {per_rank} sequences each per step"
        )
    if ckpt is not None:
        logger.info(f"resuming from {ckpt.path.name} (step {step})")
    stepper = _Stepper(cfg, d, wrapped, model, optimizer, warn)
    policy = loop.CheckpointPolicy(
        cfg, out / "checkpoints", lambda at: _save(cfg, out, d, model, optimizer, at, tokens, loader)
    )
    clock = _Clock(tokens)
    stop.phase = "training"
    # closing(): the logger is closed (files flushed, wandb finished) however the loop ends, errors included.
    with stop.deferred(), contextlib.closing(logger):
        while step < tc.max_steps:
            log_now = (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps
            result = stepper.step(step, next(loader).to(d.device), log_now)
            step, tokens = step + 1, tokens + tc.batch_size * cfg.data.seq_len
            if log_now:
                record = {"tokens": tokens, **result.record(d, clock.rate(tokens))}
                if tc.eval_every and step % tc.eval_every == 0 and d.is_main:
                    from rlready.eval.lm import periodic_eval

                    record.update({f"eval_{k}": v for k, v in periodic_eval(model, data, cfg).items()})
                logger.log(step, record)
                clock.reset(tokens)
            policy.maybe_save(step, stop=dist.any_flag(stop.signum is not None, d), ok=result.finite)
    stop.phase = "the final export and evaluation"
    return _finish(cfg, out, model, data, d, step, tokens)


def _save(
    cfg: RunConfig,
    out: Path,
    d: dist.Dist,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    tokens: int,
    loader: Any,
) -> None:
    # Whole model and optimizer state on rank 0 (under FSDP every rank takes part in gathering them).
    state = dist.full_model_state(model, d, fsdp=cfg.train.fsdp)
    optimizer_state = dist.full_optimizer_state(model, optimizer, d, fsdp=cfg.train.fsdp)
    # A finite loss and gradient can still give non-finite weights (e.g. an overflowing update); such a
    # checkpoint would replace a good one through pruning, so it is never written.
    weights_ok = all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    if not dist.broadcast_flag(weights_ok, d):
        raise TrainingError(
            f"non-finite weights at step {step}; checkpoint not written (the last good one is kept; lower train.lr)"
        )
    if d.is_main:
        checkpoint.save(
            out / "checkpoints",
            step,
            model_state=state,
            optimizer_state=optimizer_state,
            state={"tokens": tokens, "loader": loader.state_dict()},
            keep=cfg.train.keep_checkpoints,
        )
    dist.barrier(d)


class _Clock:
    """Tokens per second between two log steps."""

    def __init__(self, tokens: int) -> None:
        self.reset(tokens)

    def reset(self, tokens: int) -> None:
        self.t, self.tokens = time.perf_counter(), tokens

    def rate(self, tokens: int) -> float:
        return (tokens - self.tokens) / max(time.perf_counter() - self.t, 1e-9)


@dataclass
class _StepResult:
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    weighting: TokenWeighting
    stats: Any  # summed loss statistics of this rank, on log steps

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss)) and bool(torch.isfinite(self.grad_norm))

    def record(self, d: dist.Dist, tokens_per_s: float) -> dict[str, Any]:
        w = self.weighting
        rec = {"lr": self.lr, "loss": float(self.loss), "grad_norm": float(self.grad_norm)}
        rec.update(beta=w.beta, lam_head=w.lam_head, lam_tail=w.lam_tail, tokens_per_s=tokens_per_s)
        if self.stats is not None:
            s = self.stats.as_tensor()
            dist.all_reduce_sum(s, d)
            m = type(self.stats).from_tensor(s).means()
            keys = ("ce", "ppl", "entropy", "accuracy", "head_mass", "tail_mass", "head_entropy")
            rec.update({key: m[key] for key in keys})
        return rec


class _Stepper:
    """One optimizer step: the knobs' and the learning rate's schedules, gradient accumulation over
    micro-batches (DDP syncing on the last), clipping, and skipping a non-finite step."""

    def __init__(
        self, cfg: RunConfig, d: dist.Dist, wrapped: nn.Module, model: nn.Module, optimizer, warn
    ) -> None:
        self.cfg, self.d, self.warn = cfg, d, warn
        self.wrapped, self.model, self.optimizer = wrapped, model, optimizer
        # The knobs are schedules parsed with the configuration. Constant ones (every configuration of the
        # paper) give one weighting for the whole run; scheduled ones are evaluated at every step.
        self.constant = None if cfg.loss.scheduled else cfg.loss.weighting(0.0)
        self.autocast = loop.autocast(cfg.train.autocast, d.device)
        self.bad_steps = 0

    def _schedules(self, step: int) -> tuple[TokenWeighting, float]:
        tc, progress = self.cfg.train, step / max(1, self.cfg.train.max_steps)
        weighting = self.constant if self.constant is not None else self.cfg.loss.weighting(progress)
        lr = wsd_lr(
            step,
            max_steps=tc.max_steps,
            lr=tc.lr,
            final_lr=tc.final_lr,
            warmup_steps=tc.warmup_steps,
            decay_fraction=tc.decay_fraction,
        )
        return weighting, lr

    def step(self, step: int, batch: torch.Tensor, need_stats: bool) -> _StepResult:
        tc, d = self.cfg.train, self.d
        weighting, lr = self._schedules(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        global_tokens = tc.batch_size * self.cfg.data.seq_len
        micro = min(tc.micro_batch, batch.shape[0])
        n_micro = batch.shape[0] // micro
        loss_sum, stats_sum = torch.zeros((), dtype=torch.float64), None
        for i in range(n_micro):
            last = i == n_micro - 1 or not d.enabled or tc.fsdp
            with contextlib.nullcontext() if last else self.wrapped.no_sync(), self.autocast():
                loss, stats = self.wrapped(
                    batch[i * micro : (i + 1) * micro], weighting, self.cfg.loss.chunk_size, need_stats
                )
                # Global token mean: DDP averages over ranks, so scale each rank's sum by W / global tokens.
                (loss * (d.world_size / global_tokens)).backward()
            loss_sum += loss.detach().double()
            if stats is not None:
                stats_sum = stats if stats_sum is None else stats_sum + stats
        grad_norm = loop.clip_grad(self.model, tc.grad_clip)
        result = _StepResult(
            dist.all_reduce_sum(loss_sum.clone(), d) / global_tokens, grad_norm, lr, weighting, stats_sum
        )
        self._apply(result.finite, step)
        return result

    def _apply(self, finite: bool, step: int) -> None:
        """Take the step, or skip a non-finite one (too many in a row stop the run)."""
        if finite:
            self.bad_steps = 0
            self.optimizer.step()
        else:
            self.bad_steps += 1
            self.warn(
                f"non-finite loss or gradient at step {step + 1}; step skipped ({self.bad_steps} in a row)"
            )
            if self.bad_steps >= self.cfg.train.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_steps} non-finite steps in a row at step {step + 1}; stopping "
                    f"(last good checkpoint kept; lower train.lr or check the data)"
                )
        self.optimizer.zero_grad(set_to_none=True)


def _finish(
    cfg: RunConfig, out: Path, model: nn.Module, data: LMData, d: dist.Dist, step: int, tokens: int
) -> dict[str, Any]:
    """Save ``final/`` (Hugging Face format) and evaluate it into ``eval.json``."""
    from rlready.eval.lm import data_analysis, heldout_stats, knowledge_accuracy, reasoning_eval
    from rlready.models import save_model

    model = whole_model(cfg, d, model)
    if model is None:
        return {}
    model.generation_config.do_sample = False
    save_model(
        model,
        data.tokenizer,
        out / "final",
        max_length=cfg.data.seq_len,
        max_new_tokens=cfg.eval.max_new_tokens,
    )
    ev: dict[str, Any] = {"step": step, "tokens": tokens}
    eos = document_eos(cfg, data.tokenizer)
    ev.update(
        heldout_stats(
            model, data.heldout, seq_len=cfg.data.seq_len, k=cfg.loss.k, max_tokens=cfg.eval.tokens, eos=eos
        )
    )
    ev.update(
        data_analysis(
            model,
            data.train,
            data.heldout,
            cfg.loss.weighting(1.0),
            seq_len=cfg.data.seq_len,
            max_tokens=cfg.eval.tokens,
            eos=eos,
        )
    )
    if data.world is not None:
        questions = data.world.knowledge_questions("eval")[: cfg.eval.knowledge_questions]
        ev["knowledge"] = knowledge_accuracy(model, data.tokenizer, questions)
        problems = data.world.reasoning_problems(cfg.eval.reasoning_problems, split="eval")
        ev.update(reasoning_eval(model, data.tokenizer, problems, cfg))
    write_json(out / "eval.json", ev)
    return ev
