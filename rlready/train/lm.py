"""Pre-training and mid-training: next-token prediction with the shaped objective (PAPER.md §2–4).

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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlready.config import ConfigError, RunConfig
from rlready.errors import Interrupted, TrainingError
from rlready.losses import TokenWeighting, fused_linear_shaped_cross_entropy, parse_schedule
from rlready.train import checkpoint, dist
from rlready.train.logger import RunLogger
from rlready.train.loop import StopFlag
from rlready.train.rundir import RunLock, check_run_dir, claim, write_json
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
    sentences = world.language_sentences(max(8, int(n_chars * mix.language / 60)))
    # Easy worlds have few distinct problems; a held-out set of up to 200 is plenty for perplexity.
    problems = world.reasoning_problems(max(4, min(200, int(n_chars * mix.reasoning / 150))), split="eval")
    questions = world.knowledge_questions("eval")
    docs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
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
        dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
        model = load_model(cfg.model.init, dtype=dtype, device=device)
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


def load_or_build_model(
    cfg: RunConfig, tok: Any, device: torch.device, init_model: nn.Module | None = None
) -> nn.Module:
    """The ``--init`` model (already loaded by ``check_inputs``, or loaded here), or a fresh one."""
    from rlready.models import build_config, build_model, load_model, set_rope_theta
    from rlready.models.io import check_tokenizer_fits

    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
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
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, attr, tok.eos_token_id)
    return build_model(config, dtype=dtype, device=device)


class ShapedLMLoss(nn.Module):
    """Decoder -> fused shaped loss. The unit that DDP/FSDP wrap, so their hooks see the whole forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: torch.Tensor, weighting: TokenWeighting, chunk_size: int | None, need_stats: bool
    ):
        from rlready.models.heads import final_hidden_and_head

        h = final_hidden_and_head(self.model, batch[:, :-1])
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
    from transformers.utils import logging as hf_logging

    # transformers draws its own bars for loading and saving weights; they would break the one-line error
    # contract on stderr and interleave with the stage's progress, which already says where the run is.
    hf_logging.disable_progress_bar()
    with StopFlag() as stop:
        d = dist.init()
        try:
            setup = _setup(cfg, out, d, overwrite)
            if isinstance(setup, dict):  # finished earlier: its evaluation
                return setup
            with setup.lock or contextlib.nullcontext():
                return _train(cfg, out, d, setup, stop)
        finally:
            dist.close(d)


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
    lock, error = None, None
    if d.is_main:
        try:
            lock = claim(out, cfg, overwrite=overwrite)
            if lock is not None and data.trained_tokenizer:
                from rlready.data.tokenizer import save_tokenizer

                save_tokenizer(data.tokenizer, out / "tokenizer")
        except (ConfigError, OSError) as err:
            if not d.enabled:
                raise
            error = str(err)
    # Rank 0's outcome for every rank, so that a refused --out ends every process with the same message.
    error, finished = dist.broadcast_object((error, d.is_main and lock is None and error is None), d)
    if error is not None:
        if lock is not None:
            lock.release()
        raise ConfigError(error)
    if finished:  # another process finished this run while the inputs were read
        return json.loads((out / "eval.json").read_text())
    return _Setup(inputs, data, model_device, lock)


def _train(cfg: RunConfig, out: Path, d: dist.Dist, setup: _Setup, stop: StopFlag) -> dict[str, Any]:
    tc = cfg.train
    world_size = d.world_size
    per_rank = tc.batch_size // world_size
    micro = min(tc.micro_batch, per_rank)
    model_device, data = setup.model_device, setup.data
    model = load_or_build_model(cfg, data.tokenizer, model_device, setup.inputs.init_model)
    from rlready.data.loader import PackedBatches

    loader = PackedBatches(
        data.train, cfg.data.seq_len, per_rank, rank=d.rank, world_size=world_size, seed=cfg.seed
    )
    # Warnings go to stderr with the other diagnostics; stdout carries only the result line.
    warn = (
        (lambda msg: print(f"rlready: warning: {msg}", file=sys.stderr, flush=True))
        if d.is_main
        else (lambda msg: None)
    )
    start_step, tokens_seen = 0, 0
    # Rank 0 verifies the checkpoints (a checksum of every file) and tells the other ranks which one to load.
    ckpt = dist.broadcast_object(
        checkpoint.load_latest(out / "checkpoints", warn, require=("tokens", "loader"))
        if d.is_main
        else None,
        d,
    )
    if ckpt is not None:
        # Weights (into the whole model: every rank's, or rank 0's under FSDP, which shards them in wrap) and
        # RNG states; the optimizer once it exists.
        checkpoint.restore(ckpt, None if model_device.type == "meta" else model, None)
        loader.load_state_dict(ckpt.state["loader"])
        start_step, tokens_seen = ckpt.step, int(ckpt.state["tokens"])
    wrapped = dist.wrap(ShapedLMLoss(model), d, fsdp=tc.fsdp)
    # After wrapping: FSDP2 replaces the parameters with sharded ones, which the optimizer must hold.
    optimizer = make_optimizer(model, cfg)
    if ckpt is not None:
        dist.load_optimizer_state(
            model, optimizer, lambda: checkpoint.read_optimizer_state(ckpt), d, fsdp=tc.fsdp
        )
    knobs = {name: parse_schedule(getattr(cfg.loss, name)) for name in ("beta", "lam_head", "lam_tail")}
    use_bf16 = tc.autocast == "bf16" or (tc.autocast == "auto" and d.device.type == "cuda")
    autocast = (
        (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    )
    global_tokens = tc.batch_size * cfg.data.seq_len
    logger = RunLogger(
        out,
        total_steps=tc.max_steps,
        start_step=start_step,
        enabled=d.is_main,
        progress=cfg.log.progress,
        tensorboard=cfg.log.tensorboard,
        wandb=cfg.log.wandb,
        run_name=f"{cfg.stage}:{out.name}",
        config=cfg.to_dict(),
    )
    if d.enabled:
        logger.info(
            f"{world_size} processes ({'FSDP2' if tc.fsdp else 'DDP'}), {per_rank} sequences each per step"
        )
    if ckpt is not None:
        logger.info(f"resuming from {ckpt.path.name} (step {start_step})")
    bad_steps = 0
    step = start_step
    t_last, tok_last = time.perf_counter(), tokens_seen

    def save(step: int) -> None:
        # Whole model and optimizer state on rank 0 (under FSDP every rank takes part in gathering them).
        state = dist.full_model_state(model, d, fsdp=tc.fsdp)
        optimizer_state = dist.full_optimizer_state(model, optimizer, d, fsdp=tc.fsdp)
        # A finite loss and gradient can still give non-finite weights (e.g. an overflowing update); such a
        # checkpoint would replace a good one through pruning, so it is never written.
        weights_ok = all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
        if not dist.broadcast_flag(weights_ok, d):
            raise TrainingError(
                f"non-finite weights at step {step}; checkpoint not written (the last good one is kept; "
                "lower train.lr)"
            )
        if d.is_main:
            checkpoint.save(
                out / "checkpoints",
                step,
                model_state=state,
                optimizer_state=optimizer_state,
                state={"tokens": tokens_seen, "loader": loader.state_dict()},
                keep=tc.keep_checkpoints,
            )
        dist.barrier(d)

    # closing(): the logger is closed (files flushed, wandb finished) however the loop ends, errors included.
    stop.phase = "training"
    with stop.deferred(), contextlib.closing(logger):
        while step < tc.max_steps:
            progress = step / max(1, tc.max_steps)
            weighting = TokenWeighting(
                beta=knobs["beta"](progress),
                lam_head=knobs["lam_head"](progress),
                lam_tail=knobs["lam_tail"](progress),
                k=cfg.loss.k,
            )
            lr = wsd_lr(
                step,
                max_steps=tc.max_steps,
                lr=tc.lr,
                final_lr=tc.final_lr,
                warmup_steps=tc.warmup_steps,
                decay_fraction=tc.decay_fraction,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            log_now = (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps
            batch = next(loader).to(d.device)
            loss_sum = torch.zeros((), dtype=torch.float64)
            stats_sum = None
            n_micro = per_rank // micro
            for i in range(n_micro):
                mb = batch[i * micro : (i + 1) * micro]
                sync = (
                    contextlib.nullcontext()
                    if (i == n_micro - 1 or not d.enabled or tc.fsdp)
                    else wrapped.no_sync()
                )
                with sync, autocast():
                    loss, stats = wrapped(mb, weighting, cfg.loss.chunk_size, log_now)
                    # Global token mean: DDP averages over ranks, so scale each rank's sum by W / global tokens.
                    (loss * (world_size / global_tokens)).backward()
                loss_sum += loss.detach().double()
                if stats is not None:
                    stats_sum = stats if stats_sum is None else stats_sum + stats
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf")
            )
            loss_total = dist.all_reduce_sum(loss_sum.clone(), d) / global_tokens
            finite = bool(torch.isfinite(loss_total)) and bool(torch.isfinite(grad_norm))
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                warn(f"non-finite loss or gradient at step {step + 1}; step skipped ({bad_steps} in a row)")
                if bad_steps >= tc.max_bad_steps:
                    raise TrainingError(
                        f"{bad_steps} non-finite steps in a row at step {step + 1}; stopping "
                        f"(last good checkpoint kept; lower train.lr or check the data)"
                    )
            else:
                bad_steps = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += global_tokens
            if log_now:
                now = time.perf_counter()
                record: dict[str, Any] = {
                    "tokens": tokens_seen,
                    "lr": lr,
                    "loss": float(loss_total),
                    "grad_norm": float(grad_norm),
                    "beta": weighting.beta,
                    "lam_head": weighting.lam_head,
                    "lam_tail": weighting.lam_tail,
                    "tokens_per_s": (tokens_seen - tok_last) / max(now - t_last, 1e-9),
                }
                if stats_sum is not None:
                    s = stats_sum.as_tensor()
                    dist.all_reduce_sum(s, d)
                    m = type(stats_sum).from_tensor(s).means()
                    record.update(
                        ce=m["ce"],
                        ppl=m["ppl"],
                        entropy=m["entropy"],
                        accuracy=m["accuracy"],
                        head_mass=m["head_mass"],
                    )
                if tc.eval_every and step % tc.eval_every == 0 and d.is_main:
                    from rlready.eval.lm import periodic_eval

                    record.update({f"eval_{k}": v for k, v in periodic_eval(model, data, cfg).items()})
                logger.log(step, record)
                t_last, tok_last = time.perf_counter(), tokens_seen
            stop_now = dist.broadcast_flag(stop.signum is not None, d)
            if stop_now or (tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.max_steps):
                if finite:
                    save(step)
                if stop_now:
                    where = (
                        f"checkpoint written to {out / 'checkpoints'}"
                        if finite
                        else "last good checkpoint kept"
                    )
                    raise Interrupted(f"interrupted at step {step}; {where}; run the same command to resume")
    stop.phase = "the final export and evaluation"
    return _finish(cfg, out, model, data, d, step, tokens_seen)


def _finish(
    cfg: RunConfig, out: Path, model: nn.Module, data: LMData, d: dist.Dist, step: int, tokens: int
) -> dict[str, Any]:
    """Save ``final/`` (Hugging Face format) and evaluate it into ``eval.json``."""
    from rlready.eval.lm import heldout_stats, knowledge_accuracy, reasoning_eval
    from rlready.models import save_model

    state = dist.full_model_state(model, d, fsdp=cfg.train.fsdp)
    if not d.is_main:
        return {}
    if cfg.train.fsdp and d.enabled:
        model = load_or_build_model(cfg, data.tokenizer, torch.device("cpu"))
        model.load_state_dict(state)
    model.generation_config.do_sample = False
    save_model(model, data.tokenizer, out / "final")
    ev: dict[str, Any] = {"step": step, "tokens": tokens}
    ev.update(
        heldout_stats(model, data.heldout, seq_len=cfg.data.seq_len, k=cfg.loss.k, max_tokens=cfg.eval.tokens)
    )
    if data.world is not None:
        questions = data.world.knowledge_questions("eval")[: cfg.eval.knowledge_questions]
        ev["knowledge"] = knowledge_accuracy(model, data.tokenizer, questions)
        problems = data.world.reasoning_problems(cfg.eval.reasoning_problems, split="eval")
        ev.update(
            reasoning_eval(
                model,
                data.tokenizer,
                problems,
                n=cfg.eval.samples,
                k=cfg.eval.pass_k,
                temperature=cfg.eval.temperature,
                top_p=cfg.eval.top_p,
                max_new_tokens=cfg.eval.max_new_tokens,
            )
        )
    write_json(out / "eval.json", ev)
    return ev
