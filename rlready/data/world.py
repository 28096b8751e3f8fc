"""The embedded synthetic world: training documents per stage and held-out evaluation splits.

Pure Python and deterministic given ``WorldConfig.seed``, so a study needs no download and two runs with
the same config see the same tokens. Three kinds of text:

- knowledge (``knowledge.py``): biographies of invented people and Q/A drills about them;
- language (``language.py``): sentences from a probabilistic grammar with many plausible next words;
- reasoning (``reasoning.py``): arithmetic word problems with step-by-step or answer-only solutions, and
  drills of copying numbers from a question.

Stage mixes follow the paper (docs/method.md §5.1–5.2): pre-training is mostly knowledge and language with a
little reasoning; mid-training is reasoning-heavy.

Held-out items (knowledge questions, sentences, problems by canonical arithmetic) are chosen by a stable
hash of the item (``_sampling.in_heldout``): training generation skips them and the evaluation splits
draw only them, so the splits are disjoint however much text either side generates.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from rlready.data import knowledge
from rlready.data._sampling import MAX_REJECTIONS, in_heldout
from rlready.data.language import Grammar
from rlready.data.reasoning import Problem, ReasoningConfig, copy_drill, is_heldout_problem, make_problem

T = TypeVar("T")
Stage = Literal["pretrain", "midtrain"]
Split = Literal["train", "eval"]
STAGES = ("pretrain", "midtrain")
SPLITS = ("train", "eval")
# Bump when a change alters the generated text (code or a default of WorldConfig): cached token shards of the
# old text are not reused, and a run recorded with the old version (``data.world_version``) is not resumed.
GENERATOR_VERSION = 7


@dataclass(frozen=True)
class StageMix:
    """Relative weights of the document kinds in one stage (normalised when sampling). Defaults:
    pre-training (knowledge 0.1, language 0.75, reasoning 0.05, copy drills 0.1); mid-training
    (0.2, 0.05, 0.65, 0.1), i.e. reasoning-heavy as in the paper. Language dominates pre-training because its
    forks are where the entropy knob acts; maths is a small share of it, as in the paper, since the held-out
    text of a problem is mostly uniform draws (names, numbers) and copies, which the knob does not move
    (docs/method.md §10)."""

    knowledge: float
    language: float
    reasoning: float
    drills: float = 0.0

    def __post_init__(self) -> None:
        weights = (self.knowledge, self.language, self.reasoning, self.drills)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"stage mix weights must be >= 0 with a positive sum, got {weights}")


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the synthetic world; the same config always yields the same text."""

    seed: int = 0
    n_entities: int = 200  # invented people; each has len(knowledge.ATTRIBUTES) facts
    n_cities: int = 30  # invented cities they live in
    heldout_fraction: float = 0.1  # share of questions / sentences / problem keys kept for evaluation
    # Range for language documents: long ones, so that a document's end (a flat fork) is rare.
    sentences_per_document: tuple[int, int] = (6, 12)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)  # difficulty knobs
    pretrain_mix: StageMix = field(default_factory=lambda: StageMix(0.1, 0.75, 0.05, 0.1))
    midtrain_mix: StageMix = field(default_factory=lambda: StageMix(0.2, 0.05, 0.65, 0.1))
    # Share of reasoning documents whose solution is the answer alone (``Problem.short_solution``): enough
    # for a policy to find the short form, few enough that sampling it is not most of a model's answers.
    short_solutions: float = 0.1

    def __post_init__(self) -> None:
        if self.n_entities < 1:
            raise ValueError(f"n_entities must be >= 1, got {self.n_entities}")
        if self.n_cities < 1:
            raise ValueError(f"n_cities must be >= 1, got {self.n_cities}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.short_solutions <= 1.0:
            raise ValueError(f"short_solutions must be in [0, 1], got {self.short_solutions}")
        lo, hi = self.sentences_per_document
        if not 1 <= lo <= hi:
            raise ValueError(f"sentences_per_document must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; also the identity of generated data for the token cache."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorldConfig:
        """Inverse of ``to_dict``; accepts lists where tuples are expected (YAML/JSON have no tuples)."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown WorldConfig fields: {sorted(unknown)}")
        kwargs = dict(data)
        if "sentences_per_document" in kwargs:
            kwargs["sentences_per_document"] = tuple(kwargs["sentences_per_document"])
        if isinstance(kwargs.get("reasoning"), Mapping):
            reasoning = dict(kwargs["reasoning"])
            if "operations" in reasoning:
                reasoning["operations"] = tuple(reasoning["operations"])
            kwargs["reasoning"] = ReasoningConfig(**reasoning)
        for name in ("pretrain_mix", "midtrain_mix"):
            if isinstance(kwargs.get(name), Mapping):
                kwargs[name] = StageMix(**kwargs[name])
        return cls(**kwargs)


class World:
    """A synthetic world built from a ``WorldConfig``: its people, grammar and split rules."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self._salt = f"world{self.config.seed}"
        # Separate streams, so that e.g. changing n_entities leaves the grammar's word ranking unchanged.
        rng = random.Random(f"{self.config.seed}:entities")
        self.entities = knowledge.make_entities(rng, self.config.n_entities, self.config.n_cities)
        self.grammar = Grammar(random.Random(f"{self.config.seed}:grammar"))
        frac = self.config.heldout_fraction
        self._questions: dict[str, list[knowledge.Question]] = {"train": [], "eval": []}
        for entity in self.entities:
            for attribute in knowledge.ATTRIBUTES:
                held = knowledge.is_heldout_question(self._salt, entity, attribute, frac)
                self._questions["eval" if held else "train"].append(knowledge.question(entity, attribute))

    # -- training documents -------------------------------------------------------------------------

    def documents(
        self, stage: Stage, *, n_documents: int | None = None, n_chars: int | None = None
    ) -> Iterator[str]:
        """Training documents for ``stage``: exactly ``n_documents`` of them, or as many as it takes to
        reach at least ``n_chars`` characters (give exactly one of the two)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if (n_documents is None) == (n_chars is None):
            raise ValueError("give exactly one of n_documents and n_chars")
        limit = n_documents if n_documents is not None else n_chars
        if limit is None or limit < 0:
            raise ValueError(f"document/character count must be >= 0, got {limit}")
        mix = self.config.pretrain_mix if stage == "pretrain" else self.config.midtrain_mix
        # Checked above, generated lazily below: bad arguments fail at the call, not at the first next().
        return self._generate(stage, mix, limit, count_chars=n_chars is not None)

    def _generate(self, stage: Stage, mix: StageMix, limit: int, *, count_chars: bool) -> Iterator[str]:
        kinds = (
            self._knowledge_document,
            self._language_document,
            self._reasoning_document,
            self._drill_document,
        )
        weights = (mix.knowledge, mix.language, mix.reasoning, mix.drills)
        rng = random.Random(f"{self.config.seed}:{stage}")
        produced = 0
        while produced < limit:
            doc = rng.choices(kinds, weights=weights)[0](rng)
            produced += len(doc) if count_chars else 1
            yield doc

    def _knowledge_document(self, rng: random.Random) -> str:
        train_questions = self._questions["train"]
        # Mostly biographies (the facts); some Q/A drills so the question format, and recall through it,
        # is learnt on the training questions and can transfer to the held-out ones.
        if train_questions and rng.random() < 0.3:
            return knowledge.question_drill(rng, train_questions, rng.randint(3, 6))
        return knowledge.biography(rng, rng.choice(self.entities))

    def _language_document(self, rng: random.Random, split: Split = "train") -> str:
        # Every sentence of a document belongs to its split (held-out sentences never occur in training text).
        lo, hi = self.config.sentences_per_document
        return " ".join(self.grammar.document(rng, rng.randint(lo, hi), lambda s: self._in_split(s, split)))

    def _reasoning_document(self, rng: random.Random) -> str:
        # One problem per document: the EOS that follows it teaches the model to stop after "#### n",
        # which RL relies on (a response that runs on into another question is truncated).
        p = self._problem(rng, "train")
        short = rng.random() < self.config.short_solutions
        return p.prompt + (p.short_solution if short else p.solution)

    def _drill_document(self, rng: random.Random) -> str:
        return copy_drill(rng, self.config.reasoning, lambda r: self._problem(r, "train"))

    def _in_split(self, sentence: str, split: Split) -> bool:
        # Rejection keeps the distribution of each split the grammar's, conditioned on the split.
        return in_heldout(self._salt, f"language:{sentence}", self.config.heldout_fraction) == (
            split == "eval"
        )

    def _sentence(self, rng: random.Random, split: Split) -> str:
        return self.grammar.document(rng, 1, lambda s: self._in_split(s, split))[0]

    def _problem(self, rng: random.Random, split: Split) -> Problem:
        for _ in range(MAX_REJECTIONS):
            p = make_problem(rng, self.config.reasoning)
            if is_heldout_problem(self._salt, p, self.config.heldout_fraction) == (split == "eval"):
                return p
        raise ValueError(f"no {split} problem found in {MAX_REJECTIONS} draws: widen the reasoning config")

    # -- evaluation splits and RL prompts -----------------------------------------------------------

    def knowledge_questions(self, split: Split = "eval") -> list[knowledge.Question]:
        """All knowledge questions of ``split``. ``eval`` questions are never asked in training documents,
        though their facts are stated there; ``train`` questions are the ones the drills use."""
        _check_split(split)
        return list(self._questions[split])

    def language_sentences(self, n: int, split: Split = "eval") -> list[str]:
        """``n`` distinct grammar sentences of ``split`` (``eval`` ones never occur in training text)."""
        _check_split(split)
        rng = random.Random(f"{self.config.seed}:language:{split}")
        return _distinct(n, lambda: self._sentence(rng, split), lambda s: s, "sentences")

    def language_documents(self, n: int, split: Split = "eval") -> list[str]:
        """``n`` language documents made as training's are, of ``split``'s sentences only."""
        _check_split(split)
        if n < 0:
            raise ValueError(f"number of documents must be >= 0, got {n}")
        rng = random.Random(f"{self.config.seed}:language-documents:{split}")
        return [self._language_document(rng, split) for _ in range(n)]

    def reasoning_problems(self, n: int, split: Split = "train") -> list[Problem]:
        """``n`` problems of ``split`` with distinct canonical arithmetic (``Problem.key``). ``train``
        problems are for RL; ``eval`` ones share no key with any training document or RL prompt."""
        _check_split(split)
        rng = random.Random(f"{self.config.seed}:reasoning:{split}")
        return _distinct(n, lambda: self._problem(rng, split), lambda p: p.key, "reasoning problems")


def generate_documents(
    config: WorldConfig, stage: Stage, *, n_documents: int | None = None, n_chars: int | None = None
) -> Iterator[str]:
    """Training documents of ``stage`` for the world ``config`` (see ``World.documents``)."""
    return World(config).documents(stage, n_documents=n_documents, n_chars=n_chars)


def world_identity(
    config: WorldConfig, stage: Stage, *, n_documents: int | None = None, n_chars: int | None = None
) -> dict[str, Any]:
    """Everything that determines ``generate_documents(config, stage, ...)``: the token-cache identity."""
    return {
        "generator": GENERATOR_VERSION,
        "world": config.to_dict(),
        "stage": stage,
        "n_documents": n_documents,
        "n_chars": n_chars,
    }


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _distinct(n: int, draw: Callable[[], T], key: Callable[[T], Hashable], what: str) -> list[T]:
    """``n`` draws with distinct keys; fails clearly when the item space is too small for ``n``."""
    if n < 0:
        raise ValueError(f"number of {what} must be >= 0, got {n}")
    items: list[T] = []
    seen: set[Hashable] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"only {len(items)} distinct {what} found for {n} requested: widen the world")
        item = draw()
        k = key(item)
        if k not in seen:
            seen.add(k)
            items.append(item)
    return items
