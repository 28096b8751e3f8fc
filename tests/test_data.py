"""The synthetic world: determinism, document counts, stage mixes, fact coverage and disjoint splits."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from rlready.data import knowledge
from rlready.data._sampling import in_heldout
from rlready.data.reasoning import Problem, ReasoningConfig
from rlready.data.world import StageMix, World, WorldConfig, generate_documents, world_identity

SMALL = WorldConfig(seed=3, n_entities=30, n_cities=8)


@pytest.fixture(scope="module")
def small_world() -> World:
    return World(SMALL)


@pytest.fixture(scope="module")
def train_docs() -> list[str]:
    """A large sample of every training document either stage produces for SMALL."""
    return list(generate_documents(SMALL, "pretrain", n_documents=4000)) + list(
        generate_documents(SMALL, "midtrain", n_documents=3000)
    )


def _kind(doc: str) -> str:
    if (
        "Copy:" in doc
        or re.fullmatch(r"\d+ [-+*] \d+ = \d+\.", doc.splitlines()[0])
        or re.search(r"\n#### \d+\n", doc)  # a reasoning document is one problem; drills go on after it
    ):
        return "drills"
    if "####" in doc:
        return "reasoning"
    if doc.startswith("Q:") or any(e in doc for e in ("lives in", "was born", "favourite", "pet", "resides")):
        return "knowledge"
    return "language"


def _sentences(docs: list[str]) -> set[str]:
    return {s for d in docs for s in re.split(r"(?<=\.) (?=[A-Z])", d)}


STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _story_key(story: str) -> str:
    """The canonical arithmetic of a story (``Mia has 7 apples. She buys 3 more.`` -> ``7+3``), read from the
    phrases of rlready.data.reasoning."""
    from rlready.data.reasoning import PHRASES

    first, *rest = re.split(r"(?<=\.) ", story)
    key = re.fullmatch(r"\w+ has (\d+) \w+\.", first).group(1)
    for sentence in rest:
        found = [
            (op, m.group(1))
            for op, phrases in PHRASES.items()
            for phrase in phrases
            if (m := re.fullmatch(_phrase_pattern(phrase), sentence, flags=re.I))
        ]
        assert len(found) == 1, sentence
        key += "".join(found[0])
    return key


def _phrase_pattern(phrase: str) -> str:
    return (
        re.escape(phrase).replace(r"\{p\}", r"\w+").replace(r"\{items\}", r"\w+").replace(r"\{b\}", r"(\d+)")
    )


def _solution_key(solution: str) -> str:
    """The canonical arithmetic of a solution, rebuilt from its written steps."""
    steps = STEP.findall(solution)
    return steps[0][0] + "".join(op + b for _, op, b, _ in steps)


# -- determinism and counts ------------------------------------------------------------------------------


def test_same_config_same_documents_different_seed_differs() -> None:
    a = list(generate_documents(SMALL, "pretrain", n_documents=50))
    b = list(generate_documents(SMALL, "pretrain", n_documents=50))
    c = list(generate_documents(WorldConfig(seed=4, n_entities=30, n_cities=8), "pretrain", n_documents=50))
    assert a == b
    assert a != c


def test_stages_draw_different_streams() -> None:
    assert list(generate_documents(SMALL, "pretrain", n_documents=20)) != list(
        generate_documents(SMALL, "midtrain", n_documents=20)
    )


@pytest.mark.parametrize("n", [0, 1, 37])
def test_n_documents_is_exact(n: int) -> None:
    docs = list(generate_documents(SMALL, "pretrain", n_documents=n))
    assert len(docs) == n
    assert all(isinstance(d, str) and d.strip() for d in docs)


def test_n_chars_stops_just_after_the_target() -> None:
    docs = list(generate_documents(SMALL, "midtrain", n_chars=20_000))
    total = sum(len(d) for d in docs)
    assert total >= 20_000
    assert total - len(docs[-1]) < 20_000


def test_stage_mixes_follow_config(train_docs: list[str]) -> None:
    pre = Counter(_kind(d) for d in generate_documents(SMALL, "pretrain", n_documents=3000))
    mid = Counter(_kind(d) for d in generate_documents(SMALL, "midtrain", n_documents=3000))
    # Defaults: pretrain (0.1, 0.75, 0.05, 0.1), midtrain (0.2, 0.05, 0.65, 0.1); 3000 draws give ~±0.03.
    assert abs(pre["reasoning"] / 3000 - 0.05) < 0.02
    assert abs(pre["drills"] / 3000 - 0.1) < 0.03
    assert abs(pre["knowledge"] / 3000 - 0.1) < 0.03
    assert abs(pre["language"] / 3000 - 0.75) < 0.04
    assert abs(mid["reasoning"] / 3000 - 0.65) < 0.05
    assert abs(mid["language"] / 3000 - 0.05) < 0.03


def test_custom_mix_with_a_zero_weight() -> None:
    config = WorldConfig(seed=1, n_entities=5, pretrain_mix=StageMix(0, 1, 0))
    docs = list(generate_documents(config, "pretrain", n_documents=200))
    assert {_kind(d) for d in docs} == {"language"}


# -- knowledge -----------------------------------------------------------------------------------------


def test_questions_cover_every_fact_once(small_world: World) -> None:
    train = small_world.knowledge_questions("train")
    held = small_world.knowledge_questions("eval")
    assert len(train) + len(held) == SMALL.n_entities * len(knowledge.ATTRIBUTES)
    assert held, "the eval split must not be empty"
    pairs = [(q.entity, q.attribute) for q in train + held]
    assert len(set(pairs)) == len(pairs)
    facts = {e.name: e.facts for e in small_world.entities}
    for q in train + held:
        assert q.prompt.startswith("Q: ") and q.prompt.endswith("?\nA:")
        assert q.entity in q.prompt
        assert q.answer == " " + facts[q.entity][q.attribute]


def test_entity_names_are_unique_and_not_cities(small_world: World) -> None:
    names = [e.name for e in small_world.entities]
    assert len(set(names)) == len(names) == SMALL.n_entities
    cities = {e.facts["city"] for e in small_world.entities}
    assert not cities & set(names)


def test_every_eval_fact_is_stated_in_training_but_never_asked(
    small_world: World, train_docs: list[str]
) -> None:
    text = "\n".join(train_docs)
    facts = {e.name: e.facts for e in small_world.entities}
    for q in small_world.knowledge_questions("eval"):
        statements = [
            t.format(name=q.entity, v=facts[q.entity][q.attribute]) for t in knowledge.STATEMENTS[q.attribute]
        ]
        assert sum(s in text for s in statements) >= 2, (
            f"fact {q.entity}/{q.attribute} not stated in training"
        )
        assert q.prompt not in text
    asked = [q for q in small_world.knowledge_questions("train") if q.prompt + q.answer in text]
    assert len(asked) > 0.9 * len(small_world.knowledge_questions("train"))


# -- language ------------------------------------------------------------------------------------------


def test_language_eval_sentences_are_distinct_and_never_in_training(
    small_world: World, train_docs: list[str]
) -> None:
    held = small_world.language_sentences(300)
    assert len(held) == len(set(held)) == 300
    assert all(s[0].isupper() and s.endswith(".") for s in held)
    assert not set(held) & _sentences(train_docs)
    # The eval split is a deterministic function of the world.
    assert held == World(SMALL).language_sentences(300)


def test_language_documents_pick_up_the_previous_sentences_last_phrase(train_docs: list[str]) -> None:
    # About 30% of sentences after the first start with "The <adjective> <noun>" repeating the previous
    # sentence's last noun phrase (docs/method.md §5.1): the repetition that trains copying in text.
    picked = total = 0
    for doc in (d for d in train_docs if _kind(d) == "language"):
        sentences = re.split(r"(?<=\.) (?=[A-Z])", doc)
        for prev, cur in zip(sentences, sentences[1:], strict=False):
            first = cur.rstrip(".").replace(",", "").split()
            last = prev.rstrip(".").replace(",", "").split()
            total += 1
            picked += first[0] == "The" and first[1:3] in (last[-2:], last[1:3])
    assert total > 2000
    assert 0.25 < picked / total < 0.4


def test_language_eval_documents_hold_only_eval_sentences(small_world: World, train_docs: list[str]) -> None:
    docs = small_world.language_documents(40)
    assert docs == World(SMALL).language_documents(40)
    lo, hi = SMALL.sentences_per_document
    held = [x for d in docs for x in re.split(r"(?<=\.) (?=[A-Z])", d)]
    assert lo * 40 <= len(held) <= hi * 40
    assert not set(held) & _sentences(train_docs)
    assert all(small_world._in_split(x, "eval") for x in held)  # by the split rule, not only this sample
    assert any(x.startswith("The ") for x in held)
    with pytest.raises(ValueError, match=">= 0"):
        small_world.language_documents(-1)


def test_language_forks_have_a_preferred_word_and_a_long_tail(small_world: World) -> None:
    # After an adjective comes a noun: its preferred noun with probability 0.6-0.8 (plus Zipf draws that
    # happen to give it), else one of hundreds (docs/method.md §5.1, §10).
    sentences = small_world.language_sentences(20000, split="train")
    after: dict[str, Counter] = {}
    for s in sentences:
        words = s.lower().rstrip(".").replace(",", "").split()
        for w1, w2 in zip(words, words[1:], strict=False):
            after.setdefault(w1, Counter())[w2] += 1
    frequent = [w for w, c in after.items() if sum(c.values()) >= 400]
    assert len(frequent) >= 10
    shaped = 0
    for word in frequent:
        following = after[word]
        top = following.most_common(1)[0][1] / sum(following.values())
        shaped += 0.45 < top < 0.9 and len(following) >= 20
    assert shaped >= 0.6 * len(frequent)  # the rest: verbs before a determiner (20 of them), conjunctions
    # The tails reach hundreds of words.
    assert len(set().union(*(after[w] for w in frequent))) >= 200


def test_language_has_invented_rare_words_but_no_unwanted_ones(small_world: World) -> None:
    words = {
        w.strip(".,").lower() for s in small_world.language_sentences(5000, split="train") for w in s.split()
    }
    from rlready.data.language import _UNWANTED, NOUNS

    assert len(words) > 300
    assert len(words - set(NOUNS)) > 200
    assert not any(bad in w for w in words for bad in _UNWANTED)


# -- reasoning -----------------------------------------------------------------------------------------


def _check_problem(p) -> None:
    steps = STEP.findall(p.solution)
    assert steps, p.solution
    prev = None
    for a, op, b, c in steps:
        assert _OPS[op](int(a), int(b)) == int(c)
        assert prev is None or int(a) == prev
        prev = int(c)
    assert p.solution.endswith(f"\n#### {p.answer}")
    assert p.answer == str(prev) and prev >= 0
    assert p.key == _solution_key(p.solution)
    assert re.search(r"has (\d+) ", p.prompt).group(1) == steps[0][0]
    assert p.prompt.startswith("Q: ") and p.prompt.endswith("now?\nA:")
    assert p.solution.startswith(" ")
    # The solution retells the question, sentence by sentence, each operation's arithmetic after its sentence.
    story = p.story
    assert p.prompt.startswith(f"Q: {story} How many ") and "How many" not in story
    assert re.sub(r" \d+ [-+*] \d+ = \d+\.", "", p.solution.split("\n")[0]).strip() == story
    retold = re.split(r"(?<=\.) ", p.solution.split("\n")[0].strip())
    assert [bool(STEP.fullmatch(x)) for x in retold] == [False] + [False, True] * len(steps)


def test_problems_are_correct_and_respect_difficulty() -> None:
    cfg = ReasoningConfig(min_steps=2, max_steps=4, max_operand=9, max_multiplier=2)
    world = World(WorldConfig(seed=5, n_entities=5, reasoning=cfg))
    for p in world.reasoning_problems(300) + world.reasoning_problems(100, split="eval"):
        _check_problem(p)
        steps = STEP.findall(p.solution)
        assert 2 <= len(steps) <= 4
        assert int(steps[0][0]) <= 9
        for _, op, b, _ in steps:
            assert int(b) <= (2 if op == "*" else 9)


def test_only_allowed_operations() -> None:
    world = World(WorldConfig(seed=2, n_entities=5, reasoning=ReasoningConfig(operations=("+",))))
    assert all(set(re.findall(r"[-*+]", p.key)) == {"+"} for p in world.reasoning_problems(100))


def test_reasoning_splits_share_no_canonical_problem(small_world: World, train_docs: list[str]) -> None:
    held = small_world.reasoning_problems(300, split="eval")
    rl = small_world.reasoning_problems(1000, split="train")
    assert len({p.key for p in held}) == 300
    solutions = [m.group(1) for d in train_docs for m in re.finditer(r"\nA: (.*?)\n####", d)]
    in_docs = {_solution_key(s) for s in solutions if STEP.search(s)}
    assert len(in_docs) > 1000
    assert not {p.key for p in held} & in_docs
    assert not {p.key for p in held} & {p.key for p in rl}
    # Drills repeat training problems' stories: none is a held-out problem's arithmetic. (Comparing story
    # texts would not do: a held-out key comes with other names and objects.)
    repeated = {
        m.group(1) for d in train_docs for m in re.finditer(r"^Copy: (.* has .*) Again:", d, flags=re.M)
    }
    keys = {_story_key(story) for story in repeated}
    assert len(keys) > 300
    assert not {p.key for p in held} & keys
    assert all(_story_key(p.story) == p.key for p in held[:100])  # the parser reads stories right


def test_tiny_problem_space_fails_clearly() -> None:
    cfg = ReasoningConfig(min_steps=1, max_steps=1, max_operand=2, operations=("+",))
    world = World(WorldConfig(seed=0, n_entities=2, reasoning=cfg))
    with pytest.raises(ValueError, match="distinct reasoning problems"):
        world.reasoning_problems(50)


def test_heldout_hash_fraction() -> None:
    hits = sum(in_heldout("s", str(i), 0.1) for i in range(20_000))
    assert abs(hits / 20_000 - 0.1) < 0.01
    assert in_heldout("s", "x", 0.1) == in_heldout("s", "x", 0.1)


# -- config and bad input ------------------------------------------------------------------------------


def test_config_round_trips_through_json() -> None:
    config = WorldConfig(seed=9, reasoning=ReasoningConfig(max_steps=5, operations=("+", "-")))
    again = WorldConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_identity_changes_with_config_and_count() -> None:
    base = world_identity(SMALL, "pretrain", n_chars=1000)
    assert base == world_identity(WorldConfig(seed=3, n_entities=30, n_cities=8), "pretrain", n_chars=1000)
    assert base != world_identity(SMALL, "pretrain", n_chars=1001)
    assert base != world_identity(SMALL, "midtrain", n_chars=1000)
    assert base != world_identity(WorldConfig(seed=4, n_entities=30, n_cities=8), "pretrain", n_chars=1000)


# The default world's first documents of each stage at this GENERATOR_VERSION. A change to the generated text
# (code or a WorldConfig default) must bump GENERATOR_VERSION, which token caches and every run's config.json
# (data.world_version) record, so that text of another generator is never reused or resumed on: then update
# these digests along with it.
WORLD_DIGESTS = {7: {"pretrain": "13b07e3ac1d11097", "midtrain": "c9590f57bdc4b146"}}


@pytest.mark.parametrize("stage", ["pretrain", "midtrain"])
def test_generated_text_is_pinned_to_the_generator_version(stage: str) -> None:
    from rlready.data.world import GENERATOR_VERSION

    text = "\x00".join(generate_documents(WorldConfig(), stage, n_documents=300))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert GENERATOR_VERSION in WORLD_DIGESTS, "record the new generator's digests in WORLD_DIGESTS"
    assert digest == WORLD_DIGESTS[GENERATOR_VERSION][stage], (
        f"{stage} text changed at generator {GENERATOR_VERSION}: bump GENERATOR_VERSION and record the digests"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_entities": 0},
        {"n_cities": 0},
        {"heldout_fraction": 0.0},
        {"heldout_fraction": 1.0},
        {"sentences_per_document": (3, 2)},
        {"sentences_per_document": (0, 2)},
    ],
)
def test_bad_world_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_steps": 0},
        {"min_steps": 3, "max_steps": 2},
        {"max_operand": 1},
        {"max_multiplier": 1},
        {"operations": ()},
        {"operations": ("/",)},
    ],
)
def test_bad_reasoning_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ReasoningConfig(**kwargs)


@pytest.mark.parametrize("weights", [(-1, 1, 1), (0, 0, 0)])
def test_bad_stage_mix(weights: tuple) -> None:
    with pytest.raises(ValueError, match="stage mix"):
        StageMix(*weights)


def test_bad_document_requests(small_world: World) -> None:
    with pytest.raises(ValueError, match="stage"):
        small_world.documents("rl", n_documents=1)
    with pytest.raises(ValueError, match="exactly one"):
        small_world.documents("pretrain")
    with pytest.raises(ValueError, match="exactly one"):
        small_world.documents("pretrain", n_documents=1, n_chars=1)
    with pytest.raises(ValueError, match=">= 0"):
        small_world.documents("pretrain", n_documents=-1)
    with pytest.raises(ValueError, match="split"):
        small_world.knowledge_questions("test")
    with pytest.raises(ValueError, match=">= 0"):
        small_world.language_sentences(-1)
    with pytest.raises(ValueError, match="unknown WorldConfig"):
        WorldConfig.from_dict({"seed": 1, "n_entitys": 3})


def _drill_lines(cfg: ReasoningConfig, n: int = 400) -> list[str]:
    import random

    from rlready.data.reasoning import copy_drill, make_problem

    rng = random.Random(0)
    return [x for _ in range(n) for x in copy_drill(rng, cfg, lambda r: make_problem(r, cfg)).splitlines()]


def test_drills_arithmetic_is_right_and_reaches_carried_results() -> None:
    cfg = ReasoningConfig(max_operand=9, max_multiplier=3)
    lines = _drill_lines(cfg)
    steps = [STEP.fullmatch(x).groups() for x in lines if STEP.fullmatch(x)]
    items = len(steps) + sum(x.startswith(("Copy:", "Q:")) for x in lines)  # a problem spans three lines
    assert 0.4 < len(steps) / items < 0.6  # half of the drills
    assert all(_OPS[op](int(a), int(b)) == int(c) >= 0 for a, op, b, c in steps)
    firsts = [int(a) for a, *_ in steps]
    assert max(firsts) == 27 and min(firsts) == 1  # up to max_operand * max_multiplier
    assert 0.2 < sum(a > 9 for a in firsts) / len(firsts) < 0.5


def test_drills_repeat_lists_and_stories_and_retell_whole_problems() -> None:
    cfg = ReasoningConfig(max_operand=9, max_multiplier=3)
    text = "\n".join(_drill_lines(cfg))
    copies = re.findall(r"^Copy: (.*) Again: (.*)$", text, flags=re.M)
    assert len(copies) > 200 and all(a == b for a, b in copies)
    stories = [a for a, _ in copies if " has " in a]
    assert 0.35 < len(stories) / len(copies) < 0.65  # half lists of numbers, half a problem's story
    # The story of a repeat is a problem's: it holds more than the first operand.
    assert sum(len(re.findall(r"\d+", a)) >= 2 for a in stories) == len(stories)
    # Retold problems: each is a whole problem as make_problem writes it (the solution retells the story
    # sentence by sentence, with right arithmetic, and ends in the answer); they take more than one step, so
    # later operands are copied too.
    retold = re.findall(r"^(Q: .* How many \w+ does \w+ have now\?\nA:)( .*\n#### (\d+))$", text, flags=re.M)
    assert len(retold) > 100
    for prompt, solution, answer in retold:
        _check_problem(Problem(prompt, solution, answer, _solution_key(solution)))
    assert any(len(STEP.findall(solution)) >= 2 for _, solution, _ in retold)
