"""Language documents: sentences from a small probabilistic grammar with the next-word statistics of text.

Real text is mostly near-deterministic tokens (the rest of a word, fixed phrases) with forks in between, and a
fork usually has a preferred continuation plus a long tail: after "strong" comes "tea" more often than
anything else, yet hundreds of other words are possible. That is the shape the knobs act on: ``beta`` moves
mass between a likely continuation (probability about 0.2-0.8) and its tail, ``lam_tail`` between the top-k
and the rest (docs/method.md §3, §10). So every open word class here has hundreds of members (the listed
words plus invented rare ones, as rare words and names are in real text), and each word slot is a
collocation: the previous word prefers one successor with probability 0.6-0.8, drawn once per world, and
otherwise the successor comes from the class's Zipf law. Invented words span several tokens, whose
continuations are near-deterministic.

Text also repeats itself: a sentence often picks up what the previous one ended with ("... saw a red fox. The
red fox slept."). Predicting the repeated words means finding where they occurred before and copying what
followed (what induction heads do), the skill a solution needs to copy a question's numbers (docs/method.md
§5.1); without repetition the dominant text of pre-training would never exercise it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from rlready.data._sampling import MAX_REJECTIONS, Zipf

DETERMINERS = [
    "the", "a", "every", "some", "this", "that", "one", "no", "each", "my", "our", "another", "his", "her",
    "their", "your", "its", "any", "either", "neither",
]  # fmt: skip
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
CONJUNCTIONS = ["and", "but", "because", "while", "so", "until", "although"]


# Invented rare words: lower-case, from these syllables, never equal to a listed word.
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "gl", "pl", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ee", "oo", "ai"]
_CODAS = ["", "", "n", "r", "l", "m", "sk", "nt", "ck", "rd"]
_UNWANTED = ("fuck", "shit", "cunt", "dick", "cock", "nig", "fag", "slut", "tit", "piss")
# Class sizes with the invented words: hundreds each, so a fork's tail is long (§10 of docs/method.md).
_SIZES = {"adj": 200, "noun": 300, "verb": 200, "adv": 80}
_PREFERRED = (0.6, 0.8)  # probability of a word's preferred successor, drawn per word and world
_ZIPF = 0.7  # exponent of the tail over a class
_SECOND_CLAUSE = 0.1  # "..., and ..." : rare, so the end of a clause is a near-deterministic "."
Phrase = tuple[str, str]  # a noun phrase without its determiner: (adjective, noun)
_ANAPHORA = 0.3  # share of sentences whose subject is the previous sentence's last noun phrase, as "the ..."


class Collocations:
    """For each word of the previous class: a preferred successor in ``cls`` and its probability; otherwise a
    draw from ``cls``'s Zipf law (which may also give the preferred word)."""

    def __init__(self, previous: Sequence[str], cls: Zipf, rng: random.Random) -> None:
        self.cls = cls
        self.preferred = {w: (cls.draw(rng), rng.uniform(*_PREFERRED)) for w in previous}

    def draw(self, rng: random.Random, previous: str) -> str:
        word, p = self.preferred[previous]
        return word if rng.random() < p else self.cls.draw(rng)


def invented_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """``n`` distinct invented words of two or three syllables, none in ``taken`` (which grows)."""
    out: list[str] = []
    while len(out) < n:
        w = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.choice((2, 3)))
        )
        if w not in taken and not any(bad in w for bad in _UNWANTED):
            taken.add(w)
            out.append(w)
    return out


class Grammar:
    """A seeded probabilistic grammar over a lexicon of listed and invented words.

    S  -> Clause ("," Conj Clause)?          Clause -> NP VP
    NP -> Det Adj Noun                       VP     -> Vt NP | Vi Adv
    Det -> Adj, Adj -> Noun, Noun -> Verb, Vt -> Det and Vi -> Adv are collocations (see the module doc).
    Which rule applies is fixed by the words drawn (a transitive verb takes an object), not by a coin: a
    structural choice between two likely options is a flat fork, which the knobs barely move (§10).
    Past-tense verbs avoid number agreement, so every sentence is well formed.
    """

    def __init__(self, rng: random.Random) -> None:
        taken = set(DETERMINERS + ADJECTIVES + NOUNS + TRANSITIVE + INTRANSITIVE + ADVERBS + CONJUNCTIONS)

        def lexicon(listed: list[str], size: int) -> list[str]:
            # The listed words take the frequent ranks (in a per-world order), the invented ones the tail.
            head = rng.sample(listed, len(listed))
            return head + invented_words(rng, size - len(listed), taken)

        adjectives, nouns = lexicon(ADJECTIVES, _SIZES["adj"]), lexicon(NOUNS, _SIZES["noun"])
        n_vt = _SIZES["verb"] * len(TRANSITIVE) // (len(TRANSITIVE) + len(INTRANSITIVE))
        vt, vi = lexicon(TRANSITIVE, n_vt), lexicon(INTRANSITIVE, _SIZES["verb"] - n_vt)
        adverbs = lexicon(ADVERBS, _SIZES["adv"])
        self.vt_set = set(vt)
        self.det = Zipf(DETERMINERS, rng, exponent=2.0)
        self.conj = Zipf(CONJUNCTIONS, rng)
        adj, noun = Zipf(adjectives, rng, _ZIPF, shuffle=False), Zipf(nouns, rng, _ZIPF, shuffle=False)
        verbs = [w for pair in zip(vt, vi, strict=False) for w in pair] + vt[len(vi) :]  # listed ones first
        verb, adv = Zipf(verbs, rng, _ZIPF, shuffle=False), Zipf(adverbs, rng, _ZIPF, shuffle=False)
        self.det_adj = Collocations(DETERMINERS, adj, rng)
        self.adj_noun = Collocations(adjectives, noun, rng)
        self.noun_verb = Collocations(nouns, verb, rng)
        self.verb_det = Collocations(vt, self.det, rng)
        self.vi_adv = Collocations(vi, adv, rng)

    def _noun_phrase(self, rng: random.Random, det: str) -> list[str]:
        adj = self.det_adj.draw(rng, det)
        return [det, adj, self.adj_noun.draw(rng, adj)]

    def _clause(self, rng: random.Random, subject: Phrase | None = None) -> tuple[list[str], Phrase]:
        """A clause's words and its last noun phrase (adjective, noun): the object, or the subject."""
        words = ["the", *subject] if subject else self._noun_phrase(rng, self.det.draw(rng))
        last = (words[1], words[2])
        verb = self.noun_verb.draw(rng, words[-1])
        words.append(verb)
        if verb in self.vt_set:
            obj = self._noun_phrase(rng, self.verb_det.draw(rng, verb))
            return words + obj, (obj[1], obj[2])
        return [*words, self.vi_adv.draw(rng, verb)], last

    def sentence(self, rng: random.Random, subject: Phrase | None = None) -> tuple[str, Phrase]:
        """One sentence, capitalised and ending with a full stop, and its last noun phrase. ``subject``: a
        phrase mentioned before, which the sentence starts with as "The <adjective> <noun>"."""
        words, last = self._clause(rng, subject)
        if rng.random() < _SECOND_CLAUSE:
            words[-1] += ","
            more, last = self._clause(rng)
            words += [self.conj.draw(rng), *more]
        text = " ".join(words) + "."
        return text[0].upper() + text[1:], last

    def document(self, rng: random.Random, n: int, accept: Callable[[str], bool]) -> list[str]:
        """``n`` sentences; each picks up the previous one's last noun phrase with probability ``_ANAPHORA``.
        Only sentences ``accept`` takes are kept (redrawn with the same subject until one is)."""
        out: list[str] = []
        last: Phrase | None = None
        for _ in range(n):
            subject = last if last is not None and rng.random() < _ANAPHORA else None
            for _ in range(MAX_REJECTIONS):
                text, phrase = self.sentence(rng, subject)
                if accept(text):
                    break
            else:
                raise ValueError(f"no acceptable sentence in {MAX_REJECTIONS} draws: check heldout_fraction")
            out.append(text)
            last = phrase
        return out
