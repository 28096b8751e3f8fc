"""The teacher-forced operand-copy probe (rlready.eval.lm.operand_copy) against references computed from the
solution text: models that know every next token, or all but one digit."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from rlready.data.reasoning import ReasoningConfig
from rlready.data.tokenizer import train_tokenizer
from rlready.data.world import World, WorldConfig
from rlready.eval.lm import _copied_numbers, operand_copy


@pytest.fixture(scope="module")
def world_and_tok():
    w = World(WorldConfig(seed=3, reasoning=ReasoningConfig(max_steps=3, max_operand=20)))
    return w, train_tokenizer(w.documents("midtrain", n_chars=40_000), 400)


class _Teacher(torch.nn.Module):
    """Predicts the true next token (the input shifted left), except ``wrong`` tokens, which it never names."""

    def __init__(self, vocab: int, wrong: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.vocab, self.wrong = vocab, wrong
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the probe to read

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
        for t in self.wrong:
            nxt = torch.where(nxt == t, torch.zeros_like(nxt), nxt)  # token 0 is EOS, never an operand
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float())


def test_copied_numbers_are_those_of_the_retold_sentences() -> None:
    sol = " Mia has 7 apples. She buys 13 more. 7 + 13 = 20. Then she has 3 times as many. 20 * 3 = 60.\n#### 60"
    assert [sol[i : i + 2].strip(" .") for i in _copied_numbers(sol)] == ["7", "13", "3"]
    assert _copied_numbers(" #### 5") == []  # an answer-only solution copies nothing


def test_every_problem_retells_numbers_the_question_has(world_and_tok) -> None:
    w, _ = world_and_tok
    for p in w.reasoning_problems(50, split="eval"):
        copied = [re.match(r"\d+", p.solution[i:]).group() for i in _copied_numbers(p.solution)]
        assert copied == re.findall(r"\d+", p.prompt)  # every number of the question, in order


def test_a_model_that_knows_the_next_token_copies_everything(world_and_tok) -> None:
    w, tok = world_and_tok
    problems = w.reasoning_problems(9, split="eval")
    assert operand_copy(_Teacher(len(tok)), tok, problems, batch_size=4) == 1.0  # three padded batches


def test_share_equals_the_numbers_that_do_not_start_with_the_unknown_digit(world_and_tok) -> None:
    w, tok = world_and_tok
    problems = w.reasoning_problems(24, split="eval")
    starts = [p.solution[i] for p in problems for i in _copied_numbers(p.solution)]
    for digit in "123":
        # the digit's token with and without the space the pre-tokenizer keeps on it
        wrong = frozenset(tok.convert_tokens_to_ids([f"Ġ{digit}", digit]))
        got = operand_copy(_Teacher(len(tok), wrong), tok, problems, batch_size=5)
        assert got == pytest.approx(sum(s != digit for s in starts) / len(starts))
        assert 0.0 < got < 1.0


def test_digit_tokens_carry_their_space() -> None:
    tok = train_tokenizer(["Mia has 7 apples. 10 - 2 = 18.\n#### 18"] * 20, 300)
    pieces = tok.convert_ids_to_tokens(tok("has 7 apples. 10 - 2")["input_ids"])
    assert pieces == ["has", "Ġ7", "Ġapples", ".", "Ġ1", "0", "Ġ-", "Ġ2"]
    assert not any(re.fullmatch(r"Ġ+", p) for p in pieces)


def test_no_problems_or_no_steps_give_nan(world_and_tok) -> None:
    w, tok = world_and_tok
    assert math.isnan(operand_copy(_Teacher(len(tok)), tok, []))
    p = w.reasoning_problems(1, split="eval")[0]
    short = SimpleNamespace(prompt=p.prompt, solution=p.short_solution)
    assert math.isnan(operand_copy(_Teacher(len(tok)), tok, [short]))
