"""Evaluation of a causal LM after (or during) a stage (docs/method.md §7).

- ``heldout_stats``: perplexity, mean token entropy, top-1 accuracy and head mass (probability inside the
  top-k) on held-out tokens, from the fused loss's statistics (one pass, no ``[N, V]`` logits).
- ``knowledge_accuracy``: greedy answers to held-out fact questions, exact match of the answer's words.
- ``reasoning_eval``: greedy accuracy, and Avg@n, Cons@n, Pass@k of ``eval.samples`` samples per held-out
  problem (default temperature 0.7, top-p 0.95: the paper's Pass@k setting) from the evaluator the RL stage
  uses (``rlready.eval.reasoning``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlready.eval.reasoning import InProcessScorer, eval_seed, evaluate_reasoning, local_sampler
from rlready.losses import TokenWeighting, fused_linear_shaped_cross_entropy
from rlready.losses.stats import LossStats
from rlready.models.heads import final_hidden_and_head
from rlready.rl.rewards import get_reward, hash_answer_reward

WORLD_REWARD = "arithmetic"  # the reward RL checks the synthetic world's problems with


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
    return {"reasoning": greedy, **sampled}


def _greedy_accuracy(model: Any, tokenizer: Any, problems: Sequence[Any], max_new_tokens: int) -> float:
    """Fraction of problems whose greedy completion ends in the right ``#### n``."""
    texts = _greedy(model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens)
    hits = sum(hash_answer_reward(t, p.answer) for p, t in zip(problems, texts, strict=True))
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
        out["reasoning"] = _greedy_accuracy(model, data.tokenizer, problems, cfg.eval.max_new_tokens)
    return out
