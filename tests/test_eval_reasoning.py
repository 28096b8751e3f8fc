"""The held-out reasoning evaluator every stage uses (``rlready.eval.reasoning``): its metrics against hand
computation, its scorer, and the same numbers from the mid-training stage's final evaluation and from the RL
stage's ``initial`` evaluation of the same model."""

from __future__ import annotations

import itertools
import operator
import re

import pytest
import torch

from rlready import recipes
from rlready.config import EvalConfig
from rlready.eval.reasoning import InProcessScorer, evaluate_reasoning
from rlready.metrics import paired_gain
from rlready.rl.rewards import get_reward
from rlready.rl.rollout import Completion, stream_seed
from rlready.rl.tasks import Task


class FixedSampler:
    """Returns the given completions of each prompt and records how it was called."""

    def __init__(self, texts: dict[str, list[str]]) -> None:
        self.texts, self.calls = texts, []

    def generate(self, prompts, n, max_new_tokens, temperature, top_p=1.0, seeds=None):
        self.calls.append((list(prompts), n, max_new_tokens, temperature, top_p, list(seeds)))
        return [[Completion([], [], t, False) for t in self.texts[p][:n]] for p in prompts]


def test_metrics_match_hand_computation() -> None:
    sampler = FixedSampler(
        {
            # answers 5, 5, 3, none: 2 of 4 right, the vote (5) right
            "a": ["so #### 5", "#### 5.", "#### 3", "no answer"],
            # answers 3, 3, 7, 8: 1 of 4 right, the vote (3) wrong
            "b": ["#### 3", "#### 3", "#### 7", "#### 8"],
        }
    )
    ec = EvalConfig(samples=4, pass_k=2, temperature=0.0, top_p=0.9, max_new_tokens=7)
    rng_before = torch.get_rng_state()
    got = evaluate_reasoning(
        sampler,
        InProcessScorer(get_reward("arithmetic")),
        [Task("a", "5"), Task("b", "7")],
        ec,
        seed=11,
        reward="arithmetic",
    )
    # Pass@2 = 1 - C(n-c, 2) / C(4, 2): 1 - 1/6 with 2 right, 1 - 3/6 with 1 right. Avg@j and Cons@j take the
    # first j samples: Avg@1 = (1 + 0) / 2, Avg@2 = (1 + 0) / 2, Cons@1 = Cons@2 = (5 right + 3 wrong) / 2.
    want = {
        "avg@1": 0.5,
        "cons@1": 0.5,
        "pass@1": (2 / 4 + 1 / 4) / 2,
        "avg@2": 0.5,
        "cons@2": 0.5,
        "pass@2": (5 / 6 + 1 / 2) / 2,
        "avg@4": (2 / 4 + 1 / 4) / 2,
        "cons@4": 0.5,
        "pass@4": 1.0,
        "avg@k": (2 / 4 + 1 / 4) / 2,
        "cons@k": 0.5,
        "pass@k": (5 / 6 + 1 / 2) / 2,
        "avg@k_per_problem": [0.5, 0.25],
        "n": 4,
        "k": 2,
        "problems": 2,
        "reward_failures": 0,
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    # One call with every prompt, the settings, a tiny temperature for 0, and the seed; the caller's RNG
    # is left as it was.
    # Each problem samples from its own stream, named by the seed and the problem's number.
    seeds = [stream_seed("eval", 11, 0), stream_seed("eval", 11, 1)]
    assert sampler.calls == [(["a", "b"], 4, 7, 1e-5, 0.9, seeds)] and seeds[0] != seeds[1]
    assert torch.equal(torch.get_rng_state(), rng_before)
    with pytest.raises(ValueError, match="no problems"):
        evaluate_reasoning(sampler, InProcessScorer(operator.eq), [], ec, seed=0, reward="arithmetic")


def test_pass_curve_at_every_power_of_two_against_subset_enumeration() -> None:
    """n = 6 samples, pass_k = 3: Avg/Cons/Pass at 1, 2, 3, 4 and 6. Pass@j is checked against the share of all
    j-subsets of a problem's samples that hold a correct one; Avg@j and Cons@j against the first j samples."""
    texts = {
        "a": ["#### 5", "#### 4", "#### 4", "#### 5", "#### 5", "x"],  # right: 0, 3, 4
        "b": ["#### 1", "#### 1", "#### 1", "#### 2", "#### 7", "#### 7"],  # right: 4, 5
        "c": ["#### 9"] * 6,  # none right
    }
    gold = {"a": "5", "b": "7", "c": "3"}
    ec = EvalConfig(samples=6, pass_k=3, temperature=1.0, top_p=1.0, max_new_tokens=4)
    got = evaluate_reasoning(
        FixedSampler(texts),
        InProcessScorer(get_reward("arithmetic")),
        [Task(p, gold[p]) for p in texts],
        ec,
        seed=0,
        reward="arithmetic",
    )
    js = [1, 2, 3, 4, 6]
    assert {key for key in got if re.fullmatch(r"(avg|cons|pass)@\d+", key)} == {
        f"{m}@{j}" for m in ("avg", "cons", "pass") for j in js
    }
    for j in js:
        passes, avgs, votes = [], [], []
        for p, samples in texts.items():
            right = [t == f"#### {gold[p]}" for t in samples]
            subsets = list(itertools.combinations(range(6), j))
            passes.append(sum(any(right[i] for i in s) for s in subsets) / len(subsets))
            avgs.append(sum(right[:j]) / j)
            answers = [t.split()[-1] for t in samples[:j] if t.startswith("####")]
            top = max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
            votes.append(float(top == gold[p]))
        assert got[f"pass@{j}"] == pytest.approx(sum(passes) / 3, abs=1e-12), j
        assert got[f"avg@{j}"] == pytest.approx(sum(avgs) / 3, abs=1e-12), j
        assert got[f"cons@{j}"] == pytest.approx(sum(votes) / 3, abs=1e-12), j
    assert (got["avg@k"], got["cons@k"], got["pass@k"]) == (got["avg@6"], got["cons@6"], got["pass@3"])


class _Gathered(Exception):
    pass


class _Shard:
    """Process ``rank`` of ``world_size`` in one process: its gather records its part; once every process's
    part is recorded it returns them all, before that it stops the evaluation (``_Gathered``)."""

    def __init__(self, rank: int, world_size: int, parts: dict[int, object]) -> None:
        self.rank, self.world_size, self.parts = rank, world_size, parts

    def all_gather_object(self, obj):
        self.parts[self.rank] = obj
        if len(self.parts) < self.world_size:
            raise _Gathered
        return [self.parts[r] for r in range(self.world_size)]


def test_problems_split_across_processes_give_the_one_process_numbers() -> None:
    """Three processes each sample and score every third problem (from the problem's own stream) and gather:
    each process's result equals one process's, and each problem was sampled once, by its own process."""
    texts = {p: [f"#### {(i * j) % 4}" for j in range(4)] for i, p in enumerate("abcdefg")}
    tasks = [Task(p, str(i % 4)) for i, p in enumerate(texts)]
    ec = EvalConfig(samples=4, pass_k=2, temperature=1.0, top_p=1.0, max_new_tokens=4)
    scorer = InProcessScorer(get_reward("arithmetic"))
    one = FixedSampler(texts)
    want = evaluate_reasoning(one, scorer, tasks, ec, seed=3, reward="arithmetic")
    parts: dict[int, object] = {}
    samplers = [FixedSampler(texts) for _ in range(3)]
    for rank in (2, 1):  # the last process to gather sees every part: run it last
        with pytest.raises(_Gathered):
            evaluate_reasoning(
                samplers[rank], scorer, tasks, ec, seed=3, reward="arithmetic", shard=_Shard(rank, 3, parts)
            )
    got = evaluate_reasoning(
        samplers[0], scorer, tasks, ec, seed=3, reward="arithmetic", shard=_Shard(0, 3, parts)
    )
    assert got == want and len(set(want["avg@k_per_problem"])) > 1
    for rank, sampler in enumerate(samplers):
        ((prompts, *_, seeds),) = sampler.calls
        assert prompts == list("abcdefg")[rank::3]
        assert seeds == [stream_seed("eval", 3, i) for i in range(rank, 7, 3)]


def test_in_process_scorer_counts_failed_rewards_as_wrong() -> None:
    scorer = InProcessScorer(get_reward("arithmetic"))  # a gold answer that is not a number raises
    assert scorer.score(["#### 1", "#### 1", "#### 2"], ["1", "x", "1"]) == ([1.0, 0.0, 0.0], 1)
    assert InProcessScorer(lambda c, a: float("nan")).score(["a"], ["b"]) == ([0.0], 1)
    with pytest.raises(ValueError, match="pair up"):
        scorer.score(["a"], [])


# -- the mid-trained model's evaluation is RL's initial evaluation -----------------------------------------

_EVAL = [
    ("eval.reasoning_problems", "5"),
    ("eval.samples", "4"),
    ("eval.pass_k", "2"),
    ("eval.max_new_tokens", "6"),
]


def _first_word(text: str) -> str | None:
    words = text.split()
    return words[0] if words else None


@pytest.fixture(scope="module")
def mid_trained(tmp_path_factory: pytest.TempPathFactory):
    """A mid-training stage's end: its (untrained, tiny) model in memory and saved as ``final/``."""
    from rlready.data.tokenizer import train_tokenizer
    from rlready.data.world import World, WorldConfig
    from rlready.models import build_config, build_model, save_model

    tok = train_tokenizer(World(WorldConfig(seed=0)).documents("midtrain", n_chars=30_000), 384)
    torch.manual_seed(2)  # an initialisation whose problems get different Avg@k (asserted in the test)
    model_cfg = build_config("tiny", vocab_size=len(tok))
    model_cfg.bos_token_id = model_cfg.eos_token_id = tok.eos_token_id
    model_cfg.pad_token_id = tok.pad_token_id
    model = build_model(model_cfg)
    return model, tok, save_model(model, tok, tmp_path_factory.mktemp("midtrain") / "final")


@pytest.mark.parametrize("backend", ["cached", "hf"])
def test_mid_training_and_rl_initial_evaluations_agree(
    mid_trained, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    from rlready.data.tokenizer import load_tokenizer
    from rlready.data.world import World
    from rlready.eval.lm import reasoning_eval
    from rlready.rl import answers, rewards
    from rlready.rl.rollout import make_backend
    from rlready.rl.scoring import RewardScorer
    from rlready.rl.tasks import load_tasks
    from rlready.train import dist, rl
    from rlready.train.lm import load_or_build_model, world_config

    # An untrained model never writes a right "#### n"; a lexicographic reward (picklable, for the spawned
    # reward worker) and votes on the first word make every metric depend on the samples.
    monkeypatch.setitem(rewards._REGISTRY, "arithmetic", operator.lt)
    monkeypatch.setattr(answers, "extract_hash_answer", _first_word)

    # The mid-training stage's final evaluation, as _finish makes it.
    model, tok, final = mid_trained
    overrides = [*_EVAL, ("model.init", str(final)), ("rl.backend", backend)]
    mid_cfg = recipes.resolve("midtrain", "tiny", overrides=overrides)
    problems = World(world_config(mid_cfg)).reasoning_problems(mid_cfg.eval.reasoning_problems, split="eval")
    torch.manual_seed(1)  # whatever training left in the global RNG does not matter
    mid = reasoning_eval(model, tok, problems, mid_cfg)

    # The RL stage on that model: as rl._setup and rl._train build it.
    rl_cfg = recipes.resolve("rl", "tiny", overrides=[*overrides, ("rl.train_problems", "4")])
    _, held = load_tasks(rl_cfg)
    assert [(t.prompt, t.answer) for t in held] == [(p.prompt, p.answer) for p in problems]
    rl_tok = load_tokenizer(final)
    policy = load_or_build_model(rl_cfg, rl_tok, torch.device("cpu"))
    sampler = make_backend(backend, policy, rl_tok, model_dir=str(final), gen_batch=rl_cfg.rl.gen_batch)
    torch.manual_seed(2)
    with RewardScorer(rewards.get_reward(rl_cfg.rl.reward), rl_cfg.rl.reward_timeout_s) as scorer:
        initial = rl.evaluate(sampler, scorer, held, rl_cfg, dist.init())

    assert "reasoning" in mid and "operand_copy" in mid  # greedy accuracy and the copy probe: LM stages' own
    assert {key: v for key, v in mid.items() if key not in ("reasoning", "operand_copy")} == initial
    assert 0.0 < initial["avg@k"] < 1.0 and 0.0 < initial["pass@k"] <= 1.0
    assert len(set(initial["avg@k_per_problem"])) > 1
    assert paired_gain(mid["avg@k_per_problem"], initial["avg@k_per_problem"]) == (0.0, 0.0)
