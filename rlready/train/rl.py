"""The RL stage: GRPO with verifiable rewards on maths-style tasks (docs/method.md §5.3).

One step, top to bottom:
  1. draw ``rl.prompts_per_step`` prompts, sample ``rl.group_size`` responses each (temperature 1.0) through
     a rollout backend (``rlready.rl.rollout``: transformers ``generate`` or vLLM);
  2. score them in reward worker processes with a timeout (a reward that raises or overruns gives 0 and is
     counted); optionally add DAPO's soft overlong penalty;
  3. dynamic sampling: drop groups whose rewards are all equal and generate more rounds until the step has
     ``rl.prompts_per_step`` informative groups (at most ``rl.max_rounds`` rounds);
  4. group-normalised advantages ``(r - mean) / (std + eps)``;
  5. recompute the sampling policy's log-probabilities with the training forward pass, then make
     ``rl.minibatches`` optimizer updates over the batch with the clipped surrogate (clip-higher), token-level
     aggregation per update.

How this departs from the original GRPO (DeepSeekMath), as the paper's recipe does: no KL term and no
reference model; clip-higher (``eps_low`` 0.2, ``eps_high`` 0.28) instead of a symmetric clip; token-level
loss aggregation instead of a per-sequence mean; dynamic sampling of informative groups (DAPO); constant
LR. The default of 4 mini-batch updates per rollout batch makes updates 2..4 slightly off-policy so that
the ratio leaves 1 and the clip acts (``rl.minibatches 1`` is strictly on-policy, where it never does).
Runs in one process (``torchrun`` with several processes is refused): rollouts dominate the cost, and the
GPU path for them is the vLLM backend.

This module is the trainer; its pieces live in ``rlready.rl``: tasks and the prompt stream (``tasks``), answer
extraction (``answers``), rewards, rollouts, dynamic sampling, advantages, the loss, and the packed batch and
its log-probabilities (``batch``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlready.config import ConfigError, RunConfig
from rlready.eval.reasoning import evaluate_reasoning
from rlready.metrics import paired_gain
from rlready.rl.advantages import group_advantages
from rlready.rl.batch import Group, pack, token_logprobs
from rlready.rl.loss import policy_loss
from rlready.rl.rewards import overlong_penalty
from rlready.rl.rollout import RolloutBackend, make_backend
from rlready.rl.sampling import collect_informative_groups
from rlready.rl.tasks import PromptStream, Task, load_tasks
from rlready.train import checkpoint, dist, loop
from rlready.train.lm import load_or_build_model, make_optimizer
from rlready.train.loop import StopFlag
from rlready.train.rundir import RunLock, check_run_dir, claim, write_json

# -- rollouts -----------------------------------------------------------------------------------------------


def entropy_collapsed(history: Sequence[float], drop: float) -> bool:
    """Whether the latest entropy of ``history`` (a window of steps) is more than ``drop`` (a fraction)
    below the window's maximum: the early collapse the paper reports for high-entropy priors."""
    return len(history) > 1 and history[-1] < (1.0 - drop) * max(history)


def rollout_round(
    backend: RolloutBackend, scorer: Any, tasks: Sequence[Task], rc: Any
) -> tuple[list[Group], int]:
    """Sample and score ``rl.group_size`` responses per task; returns the groups and the failed rewards."""
    outs = backend.generate([t.prompt for t in tasks], rc.group_size, rc.max_new_tokens, rc.temperature)
    texts = [c.text for g in outs for c in g]
    scores, failures = scorer.score(texts, [t.answer for t in tasks for _ in range(rc.group_size)])
    groups = []
    for i, (task, comps) in enumerate(zip(tasks, outs, strict=True)):
        correct = scores[i * rc.group_size : (i + 1) * rc.group_size]
        penalties = [
            overlong_penalty(len(c.ids), rc.max_new_tokens, rc.overlong_buffer, rc.overlong_penalty)
            for c in comps
        ]
        groups.append(Group(task, comps, correct, [r + p for r, p in zip(correct, penalties, strict=True)]))
    return groups, failures


# -- evaluation ---------------------------------------------------------------------------------------------


def evaluate(backend: RolloutBackend, scorer: Any, tasks: Sequence[Task], cfg: RunConfig, seed: int) -> dict:
    """Avg@k, Cons@k, Pass@k and per-problem Avg@n of ``eval.samples`` samples per held-out task
    (docs/method.md §7), measured by the evaluator the LM stages use
    (:func:`rlready.eval.reasoning.evaluate_reasoning`): with the same weights, problems, settings and seed,
    ``initial`` equals the mid-trained model's numbers.

    Sampling runs under a forked, fixed-seed RNG: the same weights give the same numbers, and the rollout
    RNG of training is left untouched (so evaluating does not change what training samples).
    """
    return evaluate_reasoning(backend, scorer, tasks, cfg.eval, seed=seed, reward=cfg.rl.reward)


# -- the run ------------------------------------------------------------------------------------------------


def run(cfg: RunConfig, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one RL run in ``out``; returns eval.json."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # as in the LM stages: one-line errors, the stage's own progress
    with StopFlag() as stop:
        d = dist.init()
        try:
            if d.enabled:
                raise ConfigError(
                    "rlready rl runs in one process; use --rl.backend vllm for fast GPU rollouts"
                )
            setup = _setup(cfg, out, d, overwrite)
            if isinstance(setup, dict):  # finished earlier: its evaluation
                return setup
            with setup.lock:
                return _train(cfg, out, d, setup, stop)
        finally:
            dist.close(d)


@dataclass
class _Setup:
    train_tasks: list[Task]
    eval_tasks: list[Task]
    tok: Any
    model: nn.Module
    reward: Any
    lock: RunLock


def _setup(cfg: RunConfig, out: Path, d: dist.Dist, overwrite: bool) -> _Setup | dict[str, Any]:
    """Every input checked (tasks, tokenizer, ``--init`` model, reward), then ``--out`` claimed: until then
    nothing is written there."""
    from rlready.data.tokenizer import load_tokenizer
    from rlready.rl.rewards import get_reward

    if not cfg.model.init or not Path(cfg.model.init).is_dir():
        raise ConfigError(f"rl needs --init MODEL_DIR (a mid-trained model), got {cfg.model.init!r}")
    if check_run_dir(out, cfg, overwrite=overwrite) == "finished":
        return json.loads((out / "eval.json").read_text())
    train_tasks, eval_tasks = load_tasks(cfg)
    tok = load_tokenizer(cfg.data.tokenizer or cfg.model.init)
    reward = get_reward(cfg.rl.reward)
    model = load_or_build_model(cfg, tok, d.device)
    lock = claim(out, cfg, overwrite=overwrite)
    if lock is None:  # another process finished this run while the inputs were read
        return json.loads((out / "eval.json").read_text())
    return _Setup(train_tasks, eval_tasks, tok, model, reward, lock)


def _train(cfg: RunConfig, out: Path, d: dist.Dist, setup: _Setup, stop: StopFlag) -> dict[str, Any]:
    """The RL loop: rollouts -> GRPO update -> log -> checkpoint, between two held-out evaluations."""
    from rlready.rl.rewards import RewardScorer

    rc, tc, model, tok = cfg.rl, cfg.train, setup.model, setup.tok
    model.train()
    optimizer = make_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["lr"] = tc.lr  # constant learning rate (docs/method.md §6)
    backend = make_backend(rc.backend, model, tok, model_dir=cfg.model.init, gen_batch=rc.gen_batch)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stream, warn = PromptStream(setup.train_tasks, cfg.seed), loop.warner(True)
    autocast = loop.autocast(tc.autocast, d.device)
    ckpt = checkpoint.load_latest(out / "checkpoints", warn, require=("samples", *_RLState.KEYS))
    state = _RLState()
    policy = loop.CheckpointPolicy(
        cfg, out / "checkpoints", lambda at: _save(cfg, out, model, optimizer, at, state, stream)
    )
    # The logger is closed and the reward workers ended however the run ends, signals included.
    with contextlib.ExitStack() as ends:
        logger = ends.enter_context(
            contextlib.closing(loop.run_logger(cfg, out, 0 if ckpt is None else ckpt.step))
        )
        stop.phase = "the start of the reward workers"
        with stop.held():  # a worker cut off while it starts would print a traceback into the terminal
            scorer = ends.enter_context(
                RewardScorer(setup.reward, rc.reward_timeout_s, num_workers=rc.reward_workers)
            )
        stop.phase = "the initial evaluation"
        initial = _initial_eval(out, backend, scorer, setup.eval_tasks, cfg, logger)
        torch.manual_seed(cfg.seed)  # the rollout RNG (HF generate samples from torch's global generator)
        if ckpt is not None:
            checkpoint.restore(ckpt, model, optimizer)  # also the torch/python/numpy RNG states
            stream.load_state_dict(ckpt.state["prompts"])
            state.load(ckpt)
            logger.info(f"resuming from {ckpt.path.name} (step {state.step})")
        stop.phase = "training"
        with stop.deferred():
            while state.step < tc.max_steps:
                t0 = time.perf_counter()
                backend.sync_weights(model)
                batch, rollout = _rollouts(backend, scorer, stream, rc, warn, state.step)
                record = {"lr": tc.lr, **rollout}
                stats = (
                    _update(model, optimizer, batch.groups, cfg, pad_id, autocast) if batch.groups else None
                )
                record.update(state.advance(record.pop("n_samples"), stats, rc, warn))
                if rc.eval_every and state.step % rc.eval_every == 0 and state.step < tc.max_steps:
                    ev = evaluate(backend, scorer, setup.eval_tasks, cfg, cfg.seed + 1)
                    record.update({f"eval_{k}": ev[k] for k in ("avg@k", "cons@k", "pass@k")})
                record["step_s"] = time.perf_counter() - t0
                if tc.log_every and (state.step % tc.log_every == 0 or state.step == tc.max_steps):
                    logger.log(state.step, record)
                policy.maybe_save(state.step, stop=stop.signum is not None)
        stop.phase = "the final evaluation and export"
        backend.sync_weights(model)
        final = evaluate(backend, scorer, setup.eval_tasks, cfg, cfg.seed + 1)
    return _finish(out, model, tok, state, final, initial, cfg.rl.max_new_tokens)


class _RLState:
    """What an RL run carries from step to step besides weights, optimizer and prompt stream."""

    KEYS = ("prompts", "entropy_history", "collapsed")

    def __init__(self) -> None:
        self.step, self.samples, self.entropy_hist, self.collapsed = 0, 0, [], False

    def load(self, ckpt: checkpoint.Checkpoint) -> None:
        self.step, self.samples = ckpt.step, int(ckpt.state["samples"])
        self.entropy_hist, self.collapsed = list(ckpt.state["entropy_history"]), bool(ckpt.state["collapsed"])

    def advance(self, n_samples: int, stats: dict[str, float] | None, rc: Any, warn: Any) -> dict[str, Any]:
        """Count the step, watch the policy's entropy; the step's record fields."""
        self.step, self.samples = self.step + 1, self.samples + n_samples
        record: dict[str, Any] = {"samples": self.samples}
        if stats is not None:
            record.update(stats)
            self.entropy_hist = (self.entropy_hist + [stats["entropy"]])[-rc.entropy_window :]
            now_collapsed = entropy_collapsed(self.entropy_hist, rc.entropy_drop)
            if now_collapsed and not self.collapsed:
                warn(
                    f"entropy collapse at step {self.step}: policy entropy {stats['entropy']:.3f} is more "
                    f"than {rc.entropy_drop:.0%} below its maximum {max(self.entropy_hist):.3f} of the last "
                    f"{len(self.entropy_hist)} steps"
                )
            self.collapsed = now_collapsed
        record["entropy_collapse"] = int(self.collapsed)
        return record


def _initial_eval(out: Path, backend, scorer, tasks, cfg: RunConfig, logger) -> dict[str, Any]:
    """The policy's held-out numbers before RL, measured once (a resumed run reads them back)."""
    path = out / "eval_initial.json"
    if path.is_file():
        initial = json.loads(path.read_text())
    else:
        initial = evaluate(backend, scorer, tasks, cfg, cfg.seed + 1)
        write_json(path, initial)
    logger.info(f"initial avg@k={initial['avg@k']:.4f} pass@k={initial['pass@k']:.4f}")
    return initial


def _rollouts(
    backend, scorer, stream: PromptStream, rc: Any, warn: Any, step: int
) -> tuple[Any, dict[str, Any]]:
    """One step's rollouts with dynamic sampling, and their record fields."""
    t0 = time.perf_counter()
    seen: list[Group] = []
    fails = [0]

    def generate_round(_missing: int) -> list[Group]:
        groups, n_failed = rollout_round(backend, scorer, stream.take(rc.prompts_per_step), rc)
        seen.extend(groups)
        fails[0] += n_failed
        return groups

    batch = collect_informative_groups(generate_round, rc.prompts_per_step, rc.max_rounds, rc.std_tol)
    comps = [c for g in seen for c in g.completions]
    lengths = [len(c.ids) for c in comps]
    record: dict[str, Any] = {
        "reward_mean": sum(r for g in seen for r in g.rewards) / len(comps),
        "accuracy": sum(r for g in seen for r in g.correct) / len(comps),
        "response_len_mean": sum(lengths) / len(lengths),
        "response_len_max": max(lengths),
        "truncation_rate": sum(c.truncated for c in comps) / len(comps),
        "zero_variance_frac": batch.dropped_zero_variance / len(seen),
        "gen_rounds": batch.rounds,
        "groups_kept": len(batch.groups),
        "reward_failures": fails[0],
        "gen_s": time.perf_counter() - t0,
        "n_samples": len(comps),
    }
    if batch.capped:
        warn(
            f"step {step + 1}: {len(batch.groups)}/{rc.prompts_per_step} informative groups after {batch.rounds} rounds"
        )
    return batch, record


def _save(
    cfg: RunConfig, out: Path, model, optimizer, step: int, state: _RLState, stream: PromptStream
) -> None:
    checkpoint.save(
        out / "checkpoints",
        step,
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        state={
            "samples": state.samples,
            "prompts": stream.state_dict(),
            "entropy_history": state.entropy_hist,
            "collapsed": state.collapsed,
        },
        keep=cfg.train.keep_checkpoints,
    )


def _finish(
    out: Path, model, tok, state: _RLState, final: dict, initial: dict, max_new_tokens: int
) -> dict[str, Any]:
    """``final/`` (Hugging Face format) and ``eval.json`` with the paired gain of RL.

    ``final/`` generates RL's response length; its tokenizer keeps the mid-trained model's ``model_max_length``.
    """
    from rlready.models import save_model

    model.generation_config.do_sample = False
    save_model(model, tok, out / "final", max_new_tokens=max_new_tokens)
    result = {"step": state.step, "samples": state.samples, **final, "initial": initial}
    if "avg@k_per_problem" in initial:  # absent from runs started before it was recorded
        gain, se = paired_gain(initial["avg@k_per_problem"], final["avg@k_per_problem"])
        result.update({"avg@k_gain": gain, "avg@k_gain_se": se})
    write_json(out / "eval.json", result)
    return result


def _update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    groups: list[Group],
    cfg: RunConfig,
    pad_id: int,
    autocast,
) -> dict[str, float] | None:
    """GRPO updates on one rollout batch: ``rl.minibatches`` optimizer steps, token-level mean in each."""
    rc = cfg.rl
    adv, _ = group_advantages(
        torch.tensor([g.rewards for g in groups], dtype=torch.float32), rc.adv_eps, rc.std_tol
    )
    adv = adv.reshape(-1)
    ids, attn, mask = pack(groups, pad_id, rc.mask_truncated)
    device = next(model.parameters()).device
    ids, attn, mask, adv = ids.to(device), attn.to(device), mask.to(device), adv.to(device)
    rows = torch.arange(ids.shape[0], device=device)
    with torch.no_grad(), autocast():  # the sampling policy's log-probs: ratio exactly 1 at the first update
        old = torch.cat(
            [token_logprobs(model, ids[r], attn[r], rc.temperature)[0] for r in rows.split(rc.micro_batch)]
        )
    totals = {"loss": 0.0, "entropy": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "approx_kl": 0.0}
    n_tok_all, updates, grad_norm = 0, 0, 0.0
    # Mini-batches are whole prompt groups, in order (the group order is already a random draw).
    for mb_groups in torch.arange(len(groups)).tensor_split(rc.minibatches):
        if len(mb_groups) == 0:
            continue  # a capped batch with fewer groups than mini-batches
        mb = torch.cat([torch.arange(g * rc.group_size, (g + 1) * rc.group_size) for g in mb_groups.tolist()])
        n_tok = int(mask[mb].sum())
        if n_tok == 0:
            continue  # every response of this mini-batch was truncated and masked out
        for r in mb.split(rc.micro_batch):
            with autocast():
                logp, ent = token_logprobs(model, ids[r], attn[r], rc.temperature)
                loss, stats = policy_loss(
                    logp, old[r], adv[r], mask[r], rc.eps_low, rc.eps_high, num_tokens=n_tok
                )
            loss.backward()
            k = int(mask[r].sum())
            totals["loss"] += float(loss.detach()) * n_tok
            totals["entropy"] += float(ent[mask[r]].sum())
            for name in ("clip_frac_low", "clip_frac_high", "approx_kl"):
                totals[name] += float(stats[name]) * k
        grad_norm += float(loop.clip_grad(model, cfg.train.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n_tok_all += n_tok
        updates += 1
    if updates == 0:
        return None
    return {
        **{k: v / n_tok_all for k, v in totals.items()},
        "grad_norm": grad_norm / updates,
        "updates": updates,
    }
