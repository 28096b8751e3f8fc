"""Evaluation of a causal LM after (or during) a stage (docs/method.md §7).

- ``heldout_stats``: perplexity, mean token entropy, top-1 accuracy, head and tail mass (probability inside
  and outside the top-k) and the entropy of the top-k renormalised on held-out tokens, from the fused loss's
  statistics (one pass, no ``[N, V]`` logits).
- ``knowledge_accuracy``: greedy answers to held-out fact questions, exact match of the answer's words.
- ``operand_copy``: the teacher-forced probe of copying a problem's numbers into the sentences its solution
  retells, the skill the reasoning data needs first (docs/method.md §7).
- ``reasoning_eval``: greedy accuracy, the operand-copy probe, and Avg@n, Cons@n, Pass@k of ``eval.samples``
  samples per held-out problem (default temperature 0.7, top-p 0.95: the paper's Pass@k setting) from the
  evaluator the RL stage uses (``rlready.eval.reasoning``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rlready.data.loader import document_positions
from rlready.eval.reasoning import InProcessScorer, eval_seed, evaluate_reasoning, local_sampler
from rlready.losses import TokenWeighting, fused_linear_shaped_cross_entropy
from rlready.losses.stats import LossStats
from rlready.models.heads import final_hidden_and_head
from rlready.rl.rewards import get_reward, hash_answer_reward

WORLD_REWARD = "arithmetic"  # the reward RL checks the synthetic world's problems with


def _window_starts(n_tokens: int, seq_len: int, max_tokens: int, batch_size: int) -> Iterator[list[int]]:
    """Start offsets of the held-out windows (``seq_len`` inputs and the next token as the last target), in
    batches: at least one window, at most ``max_tokens`` tokens' worth. Every held-out measurement uses them."""
    n_windows = max(1, min((n_tokens - 1) // seq_len, max(1, max_tokens // seq_len)))
    for start in range(0, n_windows, batch_size):
        yield [r * seq_len for r in range(start, min(start + batch_size, n_windows))]


def _decode(model: Any, x: torch.Tensor, eos: int | None) -> Any:
    """The decoder's final hidden states and head on ``x``; with ``eos``, each document attends to itself only,
    as in a run trained with ``data.document_attention``."""
    positions = {} if eos is None else {"position_ids": document_positions(x, eos)}
    return final_hidden_and_head(model, x, **positions)


@torch.no_grad()
def heldout_stats(
    model: Any,
    tokens: np.ndarray,
    *,
    seq_len: int,
    k: int | float,
    max_tokens: int,
    batch_size: int = 16,
    eos: int | None = None,
) -> dict[str, float]:
    """Perplexity, entropy, accuracy and the top-``k`` head's mass, tail mass and renormalised entropy over up
    to ``max_tokens`` held-out tokens (docs/method.md §7); ``k`` a count or a fraction of the vocabulary. With
    ``eos`` set, documents attend to themselves only (``data.document_attention``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total: LossStats | None = None
    for starts in _window_starts(len(tokens), seq_len, max_tokens, batch_size):
        batch = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        x = torch.from_numpy(batch).to(device)
        h = _decode(model, x[:, :-1], eos)
        _, stats = fused_linear_shaped_cross_entropy(
            h.hidden,
            h.weight,
            x[:, 1:],
            bias=h.bias,
            weighting=TokenWeighting(k=k),
            reduction="sum",
            return_stats=True,
        )
        total = stats if total is None else total + stats
    model.train(was_training)
    assert total is not None
    m = total.means()
    return {
        "ppl": m["ppl"],
        "ce": m["ce"],
        "entropy": m["entropy"],
        "accuracy": m["accuracy"],
        "head_mass": m["head_mass"],
        "tail_mass": m["tail_mass"],
        "head_entropy": m["head_entropy"],
        "eval_tokens": int(m["tokens"]),
    }


# Training tokens the data's n-gram oracle counts (docs/method.md §10): a few million give stable estimates of
# short contexts in seconds; more only adds rare contexts the analysis backs off from anyway.
ORACLE_TOKENS = 4_000_000


def data_analysis(
    model: Any,
    train: np.ndarray,
    heldout: np.ndarray,
    weighting: Any,
    *,
    seq_len: int,
    max_tokens: int,
    eos: int | None = None,
) -> dict[str, Any]:
    """What the data allows and where the model stands (docs/method.md §10): the fixed point of this run's
    objective on the training data's n-gram oracle, the data's shape, and the model's held-out entropy on
    fork and near-deterministic tokens (labelled by the oracle)."""
    from rlready.eval.oracle import NgramOracle, analyse, position_kinds

    vocab = model.get_output_embeddings().weight.shape[0]
    oracle = NgramOracle(np.asarray(train[:ORACLE_TOKENS]), vocab)
    result = analyse(oracle, {"run": weighting})
    kinds = position_kinds(oracle, heldout)
    return {
        **entropy_by_kind(model, heldout, kinds, seq_len=seq_len, max_tokens=max_tokens, eos=eos),
        "fixed_point": result["configs"]["run"],
        "oracle": {key: result[key] for key in ("order", "min_count", "tokens")} | result["oracle"],
    }


@torch.no_grad()
def entropy_by_kind(
    model: Any,
    tokens: np.ndarray,
    kinds: np.ndarray,
    *,
    seq_len: int,
    max_tokens: int,
    batch_size: int = 16,
    eos: int | None = None,
) -> dict[str, float]:
    """Mean next-token entropy over the held-out targets that ``kinds`` marks as forks (1) and as
    near-deterministic (0), on the windows ``heldout_stats`` uses."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = {1: [0.0, 0], 0: [0.0, 0]}
    for starts in _window_starts(len(tokens), seq_len, max_tokens, batch_size):
        x = torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))
        kind = torch.from_numpy(np.stack([kinds[s + 1 : s + seq_len + 1] for s in starts]))
        h = _decode(model, x.to(device), eos)
        hidden, kind = h.hidden.reshape(-1, h.hidden.shape[-1]), kind.reshape(-1).to(device)
        for lo in range(0, hidden.shape[0], 512):  # 512 rows of logits at a time: bounded memory at any V
            z = (hidden[lo : lo + 512] @ h.weight.T).float()
            if h.bias is not None:
                z = z + h.bias.float()
            logp = z.log_softmax(-1)
            entropy = -(logp.exp() * logp).sum(-1)
            for k in (0, 1):
                sel = kind[lo : lo + 512] == k
                sums[k][0] += float(entropy[sel].sum())
                sums[k][1] += int(sel.sum())
    model.train(was_training)
    return {
        "entropy_fork": sums[1][0] / sums[1][1] if sums[1][1] else float("nan"),
        "entropy_determ": sums[0][0] / sums[0][1] if sums[0][1] else float("nan"),
        "fork_share": sums[1][1] / max(1, sums[0][1] + sums[1][1]),
    }


def _greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """The greedy completion of every prompt with ``model.generate`` (left padding, KV cache)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True).to(
            device
        )
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    model.train(was_training)
    return out


def knowledge_accuracy(
    model: Any, tokenizer: Any, questions: Sequence[Any], *, max_new_tokens: int = 8
) -> float:
    """Fraction of questions whose greedy answer's first words equal the reference answer."""
    if not questions:
        return float("nan")
    outs = _greedy(model, tokenizer, [q.prompt for q in questions], max_new_tokens=max_new_tokens)
    correct = 0
    for q, text in zip(questions, outs, strict=True):
        want = q.answer.split()
        got = text.split()[: len(want)]
        correct += [w.strip(".,") for w in got] == [w.strip(".,") for w in want]
    return correct / len(questions)


# A solution retells its question and computes after each operation's sentence (rlready/data/reasoning.py):
# "Mia has 7 apples. She buys 3 more. 7 + 3 = 10. ...". The numbers of the retold sentences are copies of the
# question's; those of the arithmetic repeat a number a few tokens back or are computed.
_STEP = re.compile(r"\d+ [-+*] \d+ = \d+\.")
_NUMBER = re.compile(r"\d+")
_MAX_LOGITS = 2**25  # logits per batch of the probe: bounded memory at any vocabulary size


def _copied_numbers(solution: str) -> list[int]:
    """Character offsets, in ``solution``, of the numbers it copies from its question: those of the retold
    sentences, not of the arithmetic or the final ``#### n``."""
    body = solution.split("####")[0]
    steps = [m.span() for m in _STEP.finditer(body)]
    return [m.start() for m in _NUMBER.finditer(body) if not any(a <= m.start() < b for a, b in steps)]


@torch.no_grad()
def operand_copy(model: Any, tokenizer: Any, problems: Sequence[Any], *, batch_size: int = 64) -> float:
    """Share of the numbers a solution copies from its question (those of the sentences it retells) whose
    first digit is the model's top prediction, given the question and the solution up to it (teacher
    forcing). The arithmetic is not counted: this isolates the skill that lets a model start a solution at
    all, copying the question's numbers by finding the phrase it has just repeated, which a small model learns
    late and by luck unless the data teaches it (docs/method.md §5.1, §7). NaN without such numbers."""
    if not problems:
        return float("nan")
    targets = []  # (problem index, token position of the number's first digit)
    texts = [p.prompt + p.solution for p in problems]
    enc = tokenizer(texts, return_offsets_mapping=True)
    for i, (p, offsets) in enumerate(zip(problems, enc["offset_mapping"], strict=True)):
        for c in _copied_numbers(p.solution):
            char = len(p.prompt) + c
            pos = next(t for t, (a, b) in enumerate(offsets) if a <= char < b)
            targets.append((i, pos))
    if not targets:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = max(len(x) for x in enc["input_ids"])
    batch_size = max(1, min(batch_size, _MAX_LOGITS // (width * len(tokenizer))))
    hits = 0
    for start in range(0, len(texts), batch_size):
        ids = enc["input_ids"][start : start + batch_size]
        x = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
        top = model(input_ids=x, attention_mask=mask).logits.argmax(-1)
        for i, pos in targets:
            if start <= i < start + batch_size:
                hits += int(top[i - start, pos - 1] == x[i - start, pos])
    model.train(was_training)
    return hits / len(targets)


def reasoning_eval(model: Any, tokenizer: Any, problems: Sequence[Any], cfg: Any) -> dict[str, Any]:
    """Greedy accuracy (``reasoning``) plus the held-out Avg@k, Cons@k and Pass@k of RL's evaluation
    (:func:`rlready.eval.reasoning.evaluate_reasoning`): RL's sampler, seed and reward on the same weights, so
    these are the numbers the RL stage reports as ``initial`` for this model."""
    if not problems:
        return {}
    sampled = evaluate_reasoning(
        local_sampler(model, tokenizer, cfg.rl),
        InProcessScorer(get_reward(WORLD_REWARD)),
        problems,
        cfg.eval,
        seed=eval_seed(cfg.seed),
        reward=WORLD_REWARD,
    )
    greedy = _greedy_accuracy(model, tokenizer, problems, cfg.eval.max_new_tokens)
    return {"reasoning": greedy, "operand_copy": operand_copy(model, tokenizer, problems), **sampled}


def _greedy_accuracy(model: Any, tokenizer: Any, problems: Sequence[Any], max_new_tokens: int) -> float:
    """Fraction of problems whose greedy completion ends in the right ``#### n``."""
    texts = _greedy(model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens)
    hits = sum(hash_answer_reward(t, p.answer) for p, t in zip(problems, texts, strict=True))
    return hits / max(1, len(problems))


def periodic_eval(model: Any, data: Any, cfg: Any) -> dict[str, float]:
    """The cheap part of the end-of-stage evaluation, for curves along training: the held-out statistics of
    ``heldout_stats``, and on the synthetic world greedy knowledge and reasoning accuracy. Greedy decoding
    draws no random numbers, so evaluating does not change the training run."""
    eos = data.tokenizer.eos_token_id if cfg.data.document_attention else None
    out: dict[str, float] = dict(
        heldout_stats(
            model, data.heldout, seq_len=cfg.data.seq_len, k=cfg.loss.k, max_tokens=cfg.eval.tokens, eos=eos
        )
    )
    if data.world is not None:
        questions = data.world.knowledge_questions("eval")[: cfg.eval.knowledge_questions]
        out["knowledge"] = knowledge_accuracy(model, data.tokenizer, questions)
        problems = data.world.reasoning_problems(cfg.eval.reasoning_problems, split="eval")
        out["reasoning"] = _greedy_accuracy(model, data.tokenizer, problems, cfg.eval.max_new_tokens)
        out["operand_copy"] = operand_copy(model, data.tokenizer, problems)
    return out
