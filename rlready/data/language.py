"""Language documents: sentences from a small probabilistic grammar.

Each open word class (adjectives, nouns, verbs, adverbs) has dozens of members with Zipf-like weights, so
after "the" or "quietly" many continuations are plausible and none is certain: the next-token entropy a
model learns here is a real property of the data, which is what the entropy knob ``beta`` acts on
(docs/method.md §3).
"""

from __future__ import annotations

import random

from rlready.data._sampling import Zipf

DETERMINERS = ["the", "a", "every", "some", "this", "that", "one", "no", "each", "my", "our", "another"]
ADJECTIVES = [
    "old", "small", "red", "quiet", "bright", "heavy", "strange", "green", "cold", "tall", "young", "broken",
    "gentle", "hungry", "silver", "ancient", "narrow", "wild", "soft", "dark", "golden", "tiny", "brave",
    "lazy", "clever", "wooden", "empty", "sleepy", "noisy", "careful", "distant", "curious", "pale", "warm",
    "rusty", "proud", "lonely", "shiny", "bitter", "round",
]  # fmt: skip
NOUNS = [
    "dog", "river", "teacher", "lamp", "garden", "stone", "bird", "window", "farmer", "boat", "letter",
    "forest", "child", "bridge", "cat", "mountain", "king", "song", "door", "painter", "wagon", "tree",
    "soldier", "bell", "island", "horse", "market", "candle", "sailor", "tower", "fox", "book", "cloud",
    "baker", "village", "wolf", "mirror", "queen", "road", "owl", "kettle", "doctor", "ship", "flower",
    "hammer", "poet", "valley", "rabbit", "clock", "merchant",
]  # fmt: skip
TRANSITIVE = [
    "saw", "found", "followed", "carried", "painted", "heard", "visited", "watched", "pushed", "lifted",
    "admired", "chased", "built", "opened", "forgot", "remembered", "praised", "hid", "fixed", "sold",
    "borrowed", "greeted", "touched", "noticed", "dropped", "guarded", "cleaned", "counted", "described",
    "feared",
]  # fmt: skip
INTRANSITIVE = [
    "slept", "laughed", "waited", "wandered", "sang", "fell", "smiled", "shivered", "vanished", "rested",
    "danced", "cried", "listened", "returned", "glowed", "paused", "trembled", "whispered", "grew", "drifted",
]  # fmt: skip
ADVERBS = [
    "slowly", "quietly", "suddenly", "happily", "again", "carefully", "often", "softly", "bravely", "early",
    "gladly", "rarely", "swiftly", "calmly", "twice", "barely",
]  # fmt: skip
PREPOSITIONS = ["near", "behind", "under", "beside", "across", "above", "inside", "beyond", "around", "past"]
CONJUNCTIONS = ["and", "but", "because", "while", "so", "until", "although"]


class Grammar:
    """A seeded probabilistic grammar over a fixed lexicon.

    S  -> Clause ("," Conj Clause)?            Clause -> NP VP
    NP -> Det Adj{0,2} Noun (Prep NP)?         VP     -> Vt NP Adv? | Vi Adv? (Prep NP)?
    Past-tense verbs avoid number agreement, so every sentence the grammar emits is well formed.
    """

    def __init__(self, rng: random.Random) -> None:
        self.det = Zipf(DETERMINERS, rng, exponent=1.2)
        self.adj = Zipf(ADJECTIVES, rng)
        self.noun = Zipf(NOUNS, rng)
        self.vt = Zipf(TRANSITIVE, rng)
        self.vi = Zipf(INTRANSITIVE, rng)
        self.adv = Zipf(ADVERBS, rng)
        self.prep = Zipf(PREPOSITIONS, rng)
        self.conj = Zipf(CONJUNCTIONS, rng)

    def _noun_phrase(self, rng: random.Random, depth: int) -> list[str]:
        words = [self.det.draw(rng)]
        n_adj = rng.choices((0, 1, 2), weights=(0.45, 0.4, 0.15))[0]
        adjectives: list[str] = []
        while len(adjectives) < n_adj:  # no "soft soft": repeated adjectives read as noise, not language
            a = self.adj.draw(rng)
            if a not in adjectives:
                adjectives.append(a)
        words += adjectives
        words.append(self.noun.draw(rng))
        if depth < 1 and rng.random() < 0.2:
            words += [self.prep.draw(rng), *self._noun_phrase(rng, depth + 1)]
        return words

    def _clause(self, rng: random.Random) -> list[str]:
        words = self._noun_phrase(rng, 0)
        if rng.random() < 0.6:
            words += [self.vt.draw(rng), *self._noun_phrase(rng, 0)]
            if rng.random() < 0.25:
                words.append(self.adv.draw(rng))
        else:
            words.append(self.vi.draw(rng))
            if rng.random() < 0.4:
                words.append(self.adv.draw(rng))
            if rng.random() < 0.3:
                words += [self.prep.draw(rng), *self._noun_phrase(rng, 1)]
        return words

    def sentence(self, rng: random.Random) -> str:
        """One sentence, capitalised and ending with a full stop."""
        words = self._clause(rng)
        if rng.random() < 0.25:
            words[-1] += ","
            words += [self.conj.draw(rng), *self._clause(rng)]
        text = " ".join(words) + "."
        return text[0].upper() + text[1:]
