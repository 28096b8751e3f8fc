"""The RL stage: GRPO with verifiable rewards on maths-style tasks (PAPER.md §4, RLVR row; §5).

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
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlready.config import ConfigError, RunConfig
from rlready.metrics import paired_gain, summarize
from rlready.rl.advantages import group_advantages
from rlready.rl.loss import policy_loss
from rlready.rl.rollout import Completion, RolloutBackend, make_backend
from rlready.rl.sampling import collect_informative_groups
from rlready.train import checkpoint, dist
from rlready.train.lm import Interrupted, load_or_build_model, make_optimizer
from rlready.train.logger import RunLogger
from rlready.train.loop import StopFlag
from rlready.train.rundir import RunLock, check_run_dir, claim, write_json

# -- tasks and rewards --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str


def _qa_prompt(question: str) -> str:
    return f"Q: {question}\nA:"  # the synthetic world's format, so mid-trained models know where to answer


def _load_math_jsonl(path: str) -> list[Task]:
    """MATH-style JSONL: ``problem`` (or ``question``) and ``answer`` (or a ``solution`` with ``\\boxed{}``)."""
    tasks = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"rl.data {path}:{lineno}: invalid JSON ({err.msg})") from None
        question = rec.get("problem", rec.get("question")) if isinstance(rec, dict) else None
        answer = (
            rec.get("answer") or boxed_answer(rec.get("solution") or "") if isinstance(rec, dict) else None
        )
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ConfigError(
                f"rl.data {path}:{lineno}: needs 'problem' and 'answer' (or a boxed 'solution')"
            )
        tasks.append(Task(_qa_prompt(question.strip()), answer))
    return tasks


def load_tasks(cfg: RunConfig) -> tuple[list[Task], list[Task]]:
    """(training prompts, held-out evaluation prompts) of the run."""
    rc = cfg.rl
    if rc.data is None:
        from rlready.data.reasoning import ReasoningConfig
        from rlready.data.world import World, WorldConfig

        # Same world seed (hence the same held-out split rule) as pre-/mid-training; the difficulty knobs
        # let a small model start RL with non-zero success, without which GRPO has no signal.
        difficulty = ReasoningConfig(max_steps=rc.task_max_steps, max_operand=rc.task_max_operand)
        world = World(WorldConfig(seed=cfg.data.world_seed, reasoning=difficulty))
        train = [Task(p.prompt, p.answer) for p in world.reasoning_problems(rc.train_problems, split="train")]
        held = [
            Task(p.prompt, p.answer) for p in world.reasoning_problems(cfg.eval.reasoning_problems, "eval")
        ]
        return train, held
    if not Path(rc.data).is_file():
        raise ConfigError(f"rl.data {rc.data!r} does not exist")
    if rc.reward == "math":
        tasks = _load_math_jsonl(rc.data)
    else:
        from rlready.rl.rewards import load_gsm8k_jsonl

        tasks = [Task(_qa_prompt(q), a) for q, a in load_gsm8k_jsonl(rc.data)]
    # The last records are held out (at most a tenth), never used as training prompts.
    n_eval = min(cfg.eval.reasoning_problems, len(tasks) // 10)
    if n_eval < 1:
        raise ConfigError(f"rl.data {rc.data!r} has {len(tasks)} records; need at least 10")
    return tasks[:-n_eval], tasks[-n_eval:]


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), for majority voting on MATH answers."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth < 0:
            return re.sub(r"\s+", "", text[i:j]) or None
    return None


def answer_key(text: str, reward: str) -> str | None:
    """The final answer a response commits to (what Cons@k votes on), or ``None``."""
    if reward == "math":
        return boxed_answer(text)
    from rlready.rl.rewards import extract_hash_answer

    return extract_hash_answer(text)


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_len - buffer`` tokens, then falling linearly to
    ``-factor`` at ``max_len`` (and beyond). ``buffer`` 0 turns it off."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    return -factor * min(1.0, (length - (max_len - buffer)) / buffer)


def entropy_collapsed(history: Sequence[float], drop: float) -> bool:
    """Whether the latest entropy of ``history`` (a window of steps) is more than ``drop`` (a fraction)
    below the window's maximum: the early collapse the paper reports for high-entropy priors."""
    return len(history) > 1 and history[-1] < (1.0 - drop) * max(history)


@dataclass
class Group:
    task: Task
    completions: list[Completion]
    correct: list[float]  # the verifier's reward
    rewards: list[float]  # what GRPO optimises: correct + overlong penalty


class PromptStream:
    """Training prompts in shuffled epochs; its state (epoch, cursor) is checkpointed for exact resume."""

    def __init__(self, tasks: Sequence[Task], seed: int) -> None:
        self.tasks, self.seed = list(tasks), seed
        self.epoch = self.cursor = 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(f"{self.seed}:rl:{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[Task]:
        out = []
        for _ in range(n):
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self.tasks[self._order[self.cursor]])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._perm()


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


# -- the training forward -----------------------------------------------------------------------------------


def token_logprobs(
    model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the entropy of the policy there, both ``[B, T-1]``.

    Logits are divided by the sampling temperature so that the ratio compares the distribution that was
    actually sampled from.
    """
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def pack(groups: Sequence[Group], pad_id: int, mask_truncated: bool) -> tuple[torch.Tensor, ...]:
    """Right-padded ``prompt + response`` rows, attention mask, and the mask of response targets ``[B, T-1]``."""
    rows = [(c.prompt_ids, c.ids, c.truncated) for g in groups for c in g.completions]
    width = max(len(p) + len(r) for p, r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (p, r, truncated) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        if not (mask_truncated and truncated):
            loss_mask[i, len(p) - 1 : len(p) + len(r) - 1] = True  # target positions of response tokens
    return ids, attn, loss_mask


# -- evaluation ---------------------------------------------------------------------------------------------


def evaluate(backend: RolloutBackend, scorer: Any, tasks: Sequence[Task], cfg: RunConfig, seed: int) -> dict:
    """Avg@k, Cons@k and Pass@k of ``eval.samples`` samples per held-out task (PAPER.md §4 metrics).

    Sampling runs under a forked, fixed-seed RNG: the same weights give the same numbers, and the rollout
    RNG of training is left untouched (so evaluating does not change what training samples).
    """
    ec = cfg.eval
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        outs = backend.generate(
            [t.prompt for t in tasks],
            ec.samples,
            ec.max_new_tokens,
            max(ec.temperature, 1e-5),
            top_p=ec.top_p,
        )
    texts = [c.text for group in outs for c in group]
    answers = [t.answer for t in tasks for _ in range(ec.samples)]
    rewards, failures = scorer.score(texts, answers)
    per_problem = []
    for i, group in enumerate(outs):
        keys = [answer_key(c.text, cfg.rl.reward) for c in group]
        per_problem.append((keys, [r >= 1.0 for r in rewards[i * ec.samples : (i + 1) * ec.samples]]))
    result: dict[str, Any] = summarize(per_problem, sorted({1, ec.pass_k, ec.samples}))
    # Generic keys hold the configured metrics (Avg@n, Cons@n, Pass@k), so a study reads them by name.
    result["avg@k"], result["cons@k"] = result[f"avg@{ec.samples}"], result[f"cons@{ec.samples}"]
    result["pass@k"] = result[f"pass@{ec.pass_k}"]
    result.update(n=ec.samples, k=ec.pass_k, problems=len(tasks), reward_failures=failures)
    # Per-problem Avg@n, so that the RL gain can be measured pairwise on the same problems (paired_gain).
    result["avg@k_per_problem"] = [sum(correct) / len(correct) for _, correct in per_problem]
    return result


# -- the run ------------------------------------------------------------------------------------------------


def run(cfg: RunConfig, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one RL run in ``out``; returns eval.json."""
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
    from rlready.models import save_model
    from rlready.rl.rewards import RewardScorer

    rc, tc = cfg.rl, cfg.train
    train_tasks, eval_tasks, tok, model = setup.train_tasks, setup.eval_tasks, setup.tok, setup.model
    model.train()
    optimizer = make_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["lr"] = tc.lr  # constant learning rate (PAPER.md §4)
    backend = make_backend(rc.backend, model, tok, model_dir=cfg.model.init, gen_batch=rc.gen_batch)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stream = PromptStream(train_tasks, cfg.seed)
    use_bf16 = tc.autocast == "bf16" or (tc.autocast == "auto" and d.device.type == "cuda")
    autocast = (
        (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    )
    warn = lambda msg: print(f"rlready: warning: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    ckpt = checkpoint.load_latest(
        out / "checkpoints", warn, require=("samples", "prompts", "entropy_history", "collapsed")
    )
    logger = RunLogger(
        out,
        total_steps=tc.max_steps,
        start_step=0 if ckpt is None else ckpt.step,
        enabled=True,
        progress=cfg.log.progress,
        tensorboard=cfg.log.tensorboard,
        wandb=cfg.log.wandb,
        run_name=f"rl:{out.name}",
        config=cfg.to_dict(),
    )
    scorer = None
    try:  # the logger is closed and the reward workers ended however the run ends, signals included
        scorer = RewardScorer(setup.reward, rc.reward_timeout_s, num_workers=rc.reward_workers)
        stop.phase = "the initial evaluation"
        initial_path = out / "eval_initial.json"
        if initial_path.is_file():
            initial = json.loads(initial_path.read_text())
        else:
            initial = evaluate(backend, scorer, eval_tasks, cfg, cfg.seed + 1)
            write_json(initial_path, initial)
        logger.info(f"initial avg@k={initial['avg@k']:.4f} pass@k={initial['pass@k']:.4f}")
        torch.manual_seed(cfg.seed)  # the rollout RNG (HF generate samples from torch's global generator)
        step, samples_seen, entropy_hist, collapsed = 0, 0, [], False
        if ckpt is not None:
            checkpoint.restore(ckpt, model, optimizer)  # also the torch/python/numpy RNG states
            stream.load_state_dict(ckpt.state["prompts"])
            step, samples_seen = ckpt.step, int(ckpt.state["samples"])
            entropy_hist, collapsed = list(ckpt.state["entropy_history"]), bool(ckpt.state["collapsed"])
            logger.info(f"resuming from {ckpt.path.name} (step {step})")

        stop.phase = "training"
        with stop.deferred():
            while step < tc.max_steps:
                t0 = time.perf_counter()
                backend.sync_weights(model)
                seen: list[Group] = []
                fails = [0]

                def generate_round(
                    _missing: int, seen: list[Group] = seen, fails: list[int] = fails
                ) -> list[Group]:
                    groups, n_failed = rollout_round(backend, scorer, stream.take(rc.prompts_per_step), rc)
                    seen.extend(groups)
                    fails[0] += n_failed
                    return groups

                batch = collect_informative_groups(
                    generate_round, rc.prompts_per_step, rc.max_rounds, rc.std_tol
                )
                t_gen = time.perf_counter() - t0
                all_comps = [c for g in seen for c in g.completions]
                lengths = [len(c.ids) for c in all_comps]
                record: dict[str, Any] = {
                    "lr": tc.lr,
                    "reward_mean": sum(r for g in seen for r in g.rewards) / len(all_comps),
                    "accuracy": sum(r for g in seen for r in g.correct) / len(all_comps),
                    "response_len_mean": sum(lengths) / len(lengths),
                    "response_len_max": max(lengths),
                    "truncation_rate": sum(c.truncated for c in all_comps) / len(all_comps),
                    "zero_variance_frac": batch.dropped_zero_variance / len(seen),
                    "gen_rounds": batch.rounds,
                    "groups_kept": len(batch.groups),
                    "reward_failures": fails[0],
                    "gen_s": t_gen,
                }
                if batch.capped:
                    warn(
                        f"step {step + 1}: {len(batch.groups)}/{rc.prompts_per_step} informative groups after {batch.rounds} rounds"
                    )
                train_stats = (
                    _update(model, optimizer, batch.groups, cfg, pad_id, autocast) if batch.groups else None
                )
                step += 1
                samples_seen += len(all_comps)
                record["samples"] = samples_seen
                if train_stats is not None:
                    record.update(train_stats)
                    entropy_hist = (entropy_hist + [train_stats["entropy"]])[-rc.entropy_window :]
                    now_collapsed = entropy_collapsed(entropy_hist, rc.entropy_drop)
                    if now_collapsed and not collapsed:
                        warn(
                            f"entropy collapse at step {step}: policy entropy {train_stats['entropy']:.3f} is more "
                            f"than {rc.entropy_drop:.0%} below its maximum {max(entropy_hist):.3f} of the last "
                            f"{len(entropy_hist)} steps"
                        )
                    collapsed = now_collapsed
                record["entropy_collapse"] = int(collapsed)
                if rc.eval_every and step % rc.eval_every == 0 and step < tc.max_steps:
                    ev = evaluate(backend, scorer, eval_tasks, cfg, cfg.seed + 1)
                    record.update({f"eval_{k}": ev[k] for k in ("avg@k", "cons@k", "pass@k")})
                record["step_s"] = time.perf_counter() - t0
                if tc.log_every and (step % tc.log_every == 0 or step == tc.max_steps):
                    logger.log(step, record)
                stop_now = stop.signum is not None
                if stop_now or (
                    tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.max_steps
                ):
                    checkpoint.save(
                        out / "checkpoints",
                        step,
                        model_state=model.state_dict(),
                        optimizer_state=optimizer.state_dict(),
                        state={
                            "samples": samples_seen,
                            "prompts": stream.state_dict(),
                            "entropy_history": entropy_hist,
                            "collapsed": collapsed,
                        },
                        keep=tc.keep_checkpoints,
                    )
                    if stop_now:
                        raise Interrupted(
                            f"interrupted at step {step}; checkpoint written to {out / 'checkpoints'}; "
                            "run the same command to resume"
                        )
        stop.phase = "the final evaluation and export"
        backend.sync_weights(model)
        final = evaluate(backend, scorer, eval_tasks, cfg, cfg.seed + 1)
    finally:
        if scorer is not None:
            scorer.close()
        logger.close()
    model.generation_config.do_sample = False
    save_model(model, tok, out / "final")
    result = {"step": step, "samples": samples_seen, **final, "initial": initial}
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
        clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
        grad_norm += float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
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
