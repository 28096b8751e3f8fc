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
Under ``torchrun`` (N processes) every process takes the same prompts from the stream and samples and scores
every N-th group; the groups are gathered, so dynamic sampling keeps the first ``rl.prompts_per_step``
informative groups of the whole step, as one process would. Each group samples from its own random stream
(seed, step, group index: ``rlready.rl.rollout.stream_seed``), so the split does not change what is sampled.
The update splits each mini-batch's sequences across the processes, and the token-level loss divides by the
mini-batch's global token count, so N processes take one process's update (DDP or FSDP2, ``train.fsdp``, as
in the LM stages). Under FSDP the rollout backend samples from a whole copy of the weights on each process,
refreshed before each use: sampling runs a different number of forward passes on each process, which a
sharded model, whose forward is a collective, cannot.

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

from rlready.config import ConfigError, RunConfig, init_world_mismatch
from rlready.eval.reasoning import eval_seed, evaluate_reasoning
from rlready.metrics import paired_gain
from rlready.rl.advantages import group_advantages
from rlready.rl.batch import Group, pack, token_logprobs
from rlready.rl.loss import policy_loss
from rlready.rl.rewards import overlong_penalty
from rlready.rl.rollout import RolloutBackend, make_backend, stream_seed
from rlready.rl.sampling import collect_informative_groups
from rlready.rl.tasks import PromptStream, Task, load_tasks
from rlready.train import checkpoint, dist, loop
from rlready.train.lm import load_or_build_model, make_optimizer, param_dtype, whole_model
from rlready.train.loop import StopFlag
from rlready.train.rundir import RunLock, check_run_dir, write_json

# -- rollouts -----------------------------------------------------------------------------------------------


def entropy_collapsed(history: Sequence[float], drop: float) -> bool:
    """Whether the latest entropy of ``history`` (a window of steps) is more than ``drop`` (a fraction)
    below the window's maximum: the early collapse the paper reports for high-entropy priors."""
    return len(history) > 1 and history[-1] < (1.0 - drop) * max(history)


def rollout_round(
    backend: RolloutBackend, scorer: Any, tasks: Sequence[Task], rc: Any, seeds: Sequence[int]
) -> tuple[list[Group], int]:
    """Sample (task i from the random stream ``seeds[i]``) and score ``rl.group_size`` responses per task;
    returns the groups and the failed rewards."""
    if not tasks:  # a process with no share of a round smaller than the process count
        return [], 0
    outs = backend.generate(
        [t.prompt for t in tasks], rc.group_size, rc.max_new_tokens, rc.temperature, seeds=seeds
    )
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


def evaluate(
    backend: RolloutBackend, scorer: Any, tasks: Sequence[Task], cfg: RunConfig, d: dist.Dist
) -> dict:
    """Avg@k, Cons@k, Pass@k and per-problem Avg@n of ``eval.samples`` samples per held-out task
    (docs/method.md §7), measured by the evaluator the LM stages use
    (:func:`rlready.eval.reasoning.evaluate_reasoning`, problems split across the processes): with the same
    weights, problems, settings and seed, ``initial`` equals the mid-trained model's numbers. Each problem
    samples from its own random stream, so the same weights give the same numbers."""
    return evaluate_reasoning(
        backend, scorer, tasks, cfg.eval, seed=eval_seed(cfg.seed), reward=cfg.rl.reward, shard=d
    )


# -- the run ------------------------------------------------------------------------------------------------


def run(cfg: RunConfig, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one RL run in ``out``; returns eval.json (rank 0's; ``{}`` on
    the other processes)."""
    return loop.run_stage(cfg, out, overwrite, _setup, _train)


@dataclass
class _Setup:
    train_tasks: list[Task]
    eval_tasks: list[Task]
    tok: Any
    model: nn.Module  # whole on every process, or (FSDP) on rank 0 and a meta skeleton elsewhere
    reward: Any
    lock: RunLock | None  # held by rank 0 for the run's lifetime


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
    model = load_or_build_model(cfg, tok, dist.model_device(d, fsdp=cfg.train.fsdp))
    lock, finished = loop.claim_on_main(out, cfg, d, overwrite=overwrite)
    if finished:  # another process finished this run while the inputs were read
        return json.loads((out / "eval.json").read_text())
    return _Setup(train_tasks, eval_tasks, tok, model, reward, lock)


def _train(cfg: RunConfig, out: Path, d: dist.Dist, setup: _Setup, stop: StopFlag) -> dict[str, Any]:
    """The RL loop: rollouts -> GRPO update -> log -> checkpoint, between two held-out evaluations."""
    from rlready.rl.rewards import RewardScorer

    rc, tc, model, tok = cfg.rl, cfg.train, setup.model, setup.tok
    model.train()
    warn = loop.warner(d.is_main)
    ckpt = loop.resume(out, d, model, warn, require=("samples", *_RLState.KEYS))
    if ckpt is None and (note := init_world_mismatch(cfg)):
        warn(note)
    wrapped = dist.wrap(model, d, fsdp=tc.fsdp)
    optimizer = make_optimizer(model, cfg)  # after wrapping: FSDP2 replaces the parameters with shards
    for group in optimizer.param_groups:
        group["lr"] = tc.lr  # constant learning rate (docs/method.md §6)
    sampler = _Sampler(cfg, d, model, tok)
    stream, state = PromptStream(setup.train_tasks, cfg.seed), _RLState()
    if ckpt is not None:
        dist.load_optimizer_state(
            model, optimizer, lambda: checkpoint.read_optimizer_state(ckpt), d, fsdp=tc.fsdp
        )
        stream.load_state_dict(ckpt.state["prompts"])
        state.load(ckpt)
    policy = loop.CheckpointPolicy(
        cfg, out / "checkpoints", lambda at: _save(cfg, out, d, model, optimizer, at, state, stream)
    )
    step_update = _Updater(cfg, d, wrapped, model, optimizer, tok)
    # The logger is closed and the reward workers ended however the run ends, signals included.
    with contextlib.ExitStack() as ends:
        logger = ends.enter_context(
            contextlib.closing(loop.run_logger(cfg, out, state.step, enabled=d.is_main))
        )
        if d.enabled:
            logger.info(
                f"{d.world_size} processes ({'FSDP2' if tc.fsdp else 'DDP'}), groups split across them"
            )
        stop.phase = "the start of the reward workers"
        with stop.held():  # a worker cut off while it starts would print a traceback into the terminal
            scorer = ends.enter_context(
                RewardScorer(setup.reward, rc.reward_timeout_s, num_workers=rc.reward_workers)
            )
        stop.phase = "the initial evaluation"
        initial = _initial_eval(
            out, sampler, scorer, setup.eval_tasks, cfg, d, logger, resumed=ckpt is not None, warn=warn
        )
        if ckpt is not None:
            logger.info(f"resuming from {ckpt.path.name} (step {state.step})")
        stop.phase = "training"
        with stop.deferred():
            while state.step < tc.max_steps:
                t0 = time.perf_counter()
                batch, record = _rollouts(sampler.synced(), scorer, stream, cfg, d, warn, state.step)
                record["lr"] = tc.lr
                stats = step_update(batch.groups) if batch.groups else None
                record.update(state.advance(record.pop("n_samples"), stats, rc, warn))
                if rc.eval_every and state.step % rc.eval_every == 0 and state.step < tc.max_steps:
                    ev = evaluate(sampler.synced(), scorer, setup.eval_tasks, cfg, d)
                    record.update({f"eval_{k}": ev[k] for k in ("avg@k", "cons@k", "pass@k")})
                record["step_s"] = time.perf_counter() - t0
                if tc.log_every and (state.step % tc.log_every == 0 or state.step == tc.max_steps):
                    logger.log(state.step, record)
                policy.maybe_save(state.step, stop=dist.any_flag(stop.signum is not None, d))
        stop.phase = "the final evaluation and export"
        final = evaluate(sampler.synced(), scorer, setup.eval_tasks, cfg, d)
    whole = whole_model(cfg, d, model)
    if whole is None:
        return {}
    return _finish(out, whole, tok, state, final, initial, cfg.rl.max_new_tokens)


class _Sampler:
    """The rollout backend on the policy's current weights (``synced()`` before each use).

    Under FSDP the cached and hf backends sample from a whole, unsharded copy on each process (the policy's
    forward is a collective that every process must run in step, and processes sample different numbers of
    tokens), as the colocated rollouts of verl and TRL hold one; vLLM's engine is that copy. Otherwise they
    sample from the policy itself."""

    def __init__(self, cfg: RunConfig, d: dist.Dist, model: nn.Module, tok: Any) -> None:
        from rlready.models import build_model

        self.model, rc = model, cfg.rl
        # vLLM holds its own copy and takes the weights one gathered tensor at a time (``sync_weights``).
        self.sharded = cfg.train.fsdp and d.enabled and rc.backend != "vllm"
        self.copy = model
        if self.sharded:  # in the weights' dtype: the same samples as one process, whose policy samples
            self.copy = build_model(model.config, dtype=param_dtype(cfg), device=d.device)
        self.backend = make_backend(
            rc.backend, self.copy, tok, model_dir=cfg.model.init, gen_batch=rc.gen_batch
        )

    def synced(self) -> RolloutBackend:
        if self.sharded:
            dist.replicate_weights(self.model, self.copy)
        self.backend.sync_weights(self.copy)
        return self.backend


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


def _initial_eval(
    out: Path, sampler: _Sampler, scorer, tasks, cfg: RunConfig, d: dist.Dist, logger, *, resumed: bool, warn
) -> dict[str, Any]:
    """The policy's held-out numbers before RL, measured once (a resumed run reads them back)."""
    path = out / "eval_initial.json"
    # Rank 0's file, sent to the others (their view of --out may not be rank 0's disk).
    initial = dist.broadcast_object(json.loads(path.read_text()) if d.is_main and path.is_file() else None, d)
    if initial is None:
        if resumed:  # the checkpoint's weights are loaded already: not the starting model's
            warn(f"{path} is missing: 'initial' is measured on the resumed checkpoint, not on --init")
        initial = evaluate(sampler.synced(), scorer, tasks, cfg, d)
        if d.is_main:
            write_json(path, initial)
    logger.info(f"initial avg@k={initial['avg@k']:.4f} pass@k={initial['pass@k']:.4f}")
    return initial


def _rollouts(
    backend, scorer, stream: PromptStream, cfg: RunConfig, d: dist.Dist, warn: Any, step: int
) -> tuple[Any, dict[str, Any]]:
    """One step's rollouts with dynamic sampling over the whole step, and their record fields.

    Every process takes the same prompts; process r samples and scores groups r, r + N, ... of each round, each
    from its own stream (the run's seed, the step, the group's index in the step); the gathered groups are the
    ones one process would have sampled, in the same order."""
    rc, t0 = cfg.rl, time.perf_counter()
    seen: list[Group] = []
    fails = [0]

    def generate_round(_missing: int) -> list[Group]:
        tasks = stream.take(rc.prompts_per_step)
        mine = list(range(d.rank, len(tasks), d.world_size))
        seeds = [stream_seed("rl", cfg.seed, step, len(seen) + i) for i in mine]
        groups, n_failed = rollout_round(backend, scorer, [tasks[i] for i in mine], rc, seeds)
        parts = d.all_gather_object((dict(zip(mine, groups, strict=True)), n_failed))
        by_index = {i: g for part, _ in parts for i, g in part.items()}
        ordered = [by_index[i] for i in range(len(tasks))]
        seen.extend(ordered)
        fails[0] += sum(n for _, n in parts)
        return ordered

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
    cfg: RunConfig,
    out: Path,
    d: dist.Dist,
    model,
    optimizer,
    step: int,
    state: _RLState,
    stream: PromptStream,
) -> None:
    # Whole model and optimizer state on rank 0 (under FSDP every process takes part in gathering them).
    model_state = dist.full_model_state(model, d, fsdp=cfg.train.fsdp)
    optimizer_state = dist.full_optimizer_state(model, optimizer, d, fsdp=cfg.train.fsdp)
    if d.is_main:
        checkpoint.save(
            out / "checkpoints",
            step,
            model_state=model_state,
            optimizer_state=optimizer_state,
            state={
                "samples": state.samples,
                "prompts": stream.state_dict(),
                "entropy_history": state.entropy_hist,
                "collapsed": state.collapsed,
            },
            keep=cfg.train.keep_checkpoints,
        )
    dist.barrier(d)


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


class _Updater:
    """GRPO updates on one rollout batch: ``rl.minibatches`` optimizer steps, token-level mean in each.

    Every process holds the whole batch and takes its contiguous share of each mini-batch's sequences; all run
    the same number of micro-batches (a process whose share is used up runs a zero-weighted one, since under
    DDP and FSDP every process must join each forward and backward). A process's loss is its tokens' sum over
    the mini-batch's global token count, times N because DDP/FSDP average the gradients of N processes: the
    update is one process's."""

    def __init__(
        self, cfg: RunConfig, d: dist.Dist, wrapped: nn.Module, model: nn.Module, optimizer, tok
    ) -> None:
        self.cfg, self.d, self.wrapped, self.model, self.optimizer = cfg, d, wrapped, model, optimizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.autocast = loop.autocast(cfg.train.autocast, d.device)

    def _chunks(self, mb: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """This process's micro-batches of mini-batch ``mb`` (rows), as ``(rows, real)``; as many on every process."""
        micro, shares = self.cfg.rl.micro_batch, mb.tensor_split(self.d.world_size)
        n = -(-len(shares[0]) // micro)  # tensor_split gives the first share the most rows
        mine = list(shares[self.d.rank].split(micro)) if len(shares[self.d.rank]) else []
        return [(rows, True) for rows in mine] + [(mb[:1], False)] * (n - len(mine))

    def __call__(self, groups: list[Group]) -> dict[str, float] | None:
        rc, d = self.cfg.rl, self.d
        adv, _ = group_advantages(
            torch.tensor([g.rewards for g in groups], dtype=torch.float32), rc.adv_eps, rc.std_tol
        )
        ids, attn, mask = (t.to(d.device) for t in pack(groups, self.pad_id, rc.mask_truncated))
        adv = adv.reshape(-1).to(d.device)
        # Mini-batches are whole prompt groups, in order (the group order is already a random draw).
        size = rc.group_size
        minibatches = [
            torch.cat([torch.arange(g * size, (g + 1) * size) for g in part.tolist()])
            for part in torch.arange(len(groups)).tensor_split(rc.minibatches)
            if len(part)  # a capped batch may have fewer groups than mini-batches
        ]
        chunks = [self._chunks(mb) for mb in minibatches]
        old = torch.zeros(mask.shape, dtype=torch.float32, device=d.device)
        with torch.no_grad(), self.autocast():  # the sampling policy's log-probs: ratio exactly 1 at first
            for rows, real in (c for mb_chunks in chunks for c in mb_chunks):
                logp = token_logprobs(self.wrapped, ids[rows], attn[rows], rc.temperature)[0]
                if real:
                    old[rows] = logp
        # Summed over tokens: loss, entropy, clip_frac_low, clip_frac_high, approx_kl.
        totals = [0.0] * 5
        n_tok_all, updates, grad_norm = 0, 0, 0.0
        for mb, mb_chunks in zip(minibatches, chunks, strict=True):
            n_tok = int(mask[mb].sum())
            if n_tok == 0:
                continue  # every response of this mini-batch was truncated and masked out
            for i, (rows, real) in enumerate(mb_chunks):
                sync = i == len(mb_chunks) - 1 or not d.enabled or self.cfg.train.fsdp
                with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                    with self.autocast():
                        logp, ent = token_logprobs(self.wrapped, ids[rows], attn[rows], rc.temperature)
                        loss, stats = policy_loss(
                            logp, old[rows], adv[rows], mask[rows], rc.eps_low, rc.eps_high, num_tokens=n_tok
                        )
                    (loss * (d.world_size if real else 0.0)).backward()
                if real:
                    k = int(mask[rows].sum())
                    parts = [float(loss.detach()) * n_tok, float(ent[mask[rows]].sum())]
                    parts += [
                        float(stats[name]) * k for name in ("clip_frac_low", "clip_frac_high", "approx_kl")
                    ]
                    totals = [t + x for t, x in zip(totals, parts, strict=True)]
            grad_norm += float(loop.clip_grad(self.model, self.cfg.train.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            n_tok_all, updates = n_tok_all + n_tok, updates + 1
        if updates == 0:
            return None
        # On the process group's device: NCCL has no CPU tensors.
        summed = (
            dist.all_reduce_sum(torch.tensor(totals, dtype=torch.float64, device=d.device), d) / n_tok_all
        )
        names = ("loss", "entropy", "clip_frac_low", "clip_frac_high", "approx_kl")
        return {
            **dict(zip(names, summed.tolist(), strict=True)),
            "grad_norm": grad_norm / updates,
            "updates": updates,
        }
