"""Evaluation of a causal LM after (or during) a stage (PAPER.md §4, metrics).

- ``heldout_stats``: perplexity, mean token entropy, top-1 accuracy and head mass (probability inside the
  top-k) on held-out tokens, from the fused loss's statistics (one pass, no ``[N, V]`` logits).
- ``knowledge_accuracy``: greedy answers to held-out fact questions, exact match of the answer's words.
- ``reasoning_eval``: ``n`` samples per held-out problem at temperature 0.7, top-p 0.95 (the paper's Pass@k
  setting), answers after ``####``; Avg@n, Cons@n, Pass@k, and greedy accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlready.losses import TokenWeighting, fused_linear_shaped_cross_entropy
from rlready.losses.stats import LossStats
from rlready.metrics import summarize
from rlready.models.heads import final_hidden_and_head
from rlready.rl.rewards import extract_hash_answer, hash_answer_reward


@torch.no_grad()
def heldout_stats(
    model: Any, tokens: np.ndarray, *, seq_len: int, k: int, max_tokens: int, batch_size: int = 16
) -> dict[str, float]:
    """Perplexity, entropy, accuracy and top-``k`` head mass over up to ``max_tokens`` held-out tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_windows = max(1, min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len)))
    span = seq_len + 1
    total: LossStats | None = None
    for start in range(0, n_windows, batch_size):
        rows = range(start, min(start + batch_size, n_windows))
        batch = np.stack([tokens[r * seq_len : r * seq_len + span] for r in rows]).astype(np.int64)
        x = torch.from_numpy(batch).to(device)
        h = final_hidden_and_head(model, x[:, :-1])
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
        "eval_tokens": int(m["tokens"]),
    }


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n: int,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
) -> list[list[str]]:
    """``n`` completions per prompt with ``model.generate`` (left padding, KV cache)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    per_batch = max(1, batch_size // n)
    for start in range(0, len(prompts), per_batch):
        chunk = list(prompts[start : start + per_batch])
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
        kwargs: dict[str, Any] = {
            "do_sample": do_sample,
            "max_new_tokens": max_new_tokens,
            "num_return_sequences": n,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        with torch.no_grad():
            gen = model.generate(
                **enc, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kwargs
            )
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out.extend(texts[i * n : (i + 1) * n] for i in range(len(chunk)))
    model.train(was_training)
    return out


def knowledge_accuracy(
    model: Any, tokenizer: Any, questions: Sequence[Any], *, max_new_tokens: int = 8
) -> float:
    """Fraction of questions whose greedy answer's first words equal the reference answer."""
    if not questions:
        return float("nan")
    outs = _generate(
        model, tokenizer, [q.prompt for q in questions], n=1, max_new_tokens=max_new_tokens, do_sample=False
    )
    correct = 0
    for q, (text,) in zip(questions, outs, strict=True):
        want = q.answer.split()
        got = text.split()[: len(want)]
        correct += [w.strip(".,") for w in got] == [w.strip(".,") for w in want]
    return correct / len(questions)


def reasoning_eval(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    *,
    n: int,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
) -> dict[str, float]:
    """Greedy accuracy plus Avg@n, Cons@n and Pass@k of ``n`` samples per problem."""
    if not problems:
        return {}
    prompts = [p.prompt for p in problems]
    greedy = _generate(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, do_sample=False)
    samples = _generate(
        model,
        tokenizer,
        prompts,
        n=n,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
    )
    per_problem = []
    for p, outs in zip(problems, samples, strict=True):
        answers = [extract_hash_answer(o) for o in outs]
        correct = [hash_answer_reward(o, p.answer) == 1.0 for o in outs]
        per_problem.append((answers, correct))
    return {"reasoning": _greedy_accuracy(problems, greedy), **summarize(per_problem, sorted({1, k, n}))}


def _greedy_accuracy(problems: Sequence[Any], greedy: list[list[str]]) -> float:
    """Fraction of problems whose greedy completion ends in the right ``#### n``."""
    hits = sum(hash_answer_reward(g[0], p.answer) for p, g in zip(problems, greedy, strict=True))
    return hits / max(1, len(problems))


def periodic_eval(model: Any, data: Any, cfg: Any) -> dict[str, float]:
    """The cheap part of the end-of-stage evaluation, for curves along training: held-out perplexity /
    entropy / head mass, and on the synthetic world greedy knowledge and reasoning accuracy. Greedy decoding
    draws no random numbers, so evaluating does not change the training run."""
    out: dict[str, float] = dict(
        heldout_stats(model, data.heldout, seq_len=cfg.data.seq_len, k=cfg.loss.k, max_tokens=cfg.eval.tokens)
    )
    if data.world is not None:
        questions = data.world.knowledge_questions("eval")[: cfg.eval.knowledge_questions]
        out["knowledge"] = knowledge_accuracy(model, data.tokenizer, questions)
        problems = data.world.reasoning_problems(cfg.eval.reasoning_problems, split="eval")
        greedy = _generate(
            model,
            data.tokenizer,
            [p.prompt for p in problems],
            n=1,
            max_new_tokens=cfg.eval.max_new_tokens,
            do_sample=False,
        )
        out["reasoning"] = _greedy_accuracy(problems, greedy)
    return out
