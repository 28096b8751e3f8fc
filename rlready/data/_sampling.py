"""Small sampling helpers shared by the synthetic world's generators.

Everything here is driven by an explicit ``random.Random`` so that a world is a pure function of its seed.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Sequence

# Draws a split-conditioned rejection loop may take: a split this rare means a degenerate config, not bad luck.
MAX_REJECTIONS = 10_000


class Zipf:
    """Draw items with weights ``1 / rank**exponent`` (a Zipf-like law, like word frequencies).

    The rank order is shuffled once with ``rng`` so different seeds rank the words differently; with
    ``shuffle=False`` it is the order of ``items`` (for callers that rank groups of words themselves).
    ``bisect`` over cumulative weights is used instead of ``rng.choices`` because it skips rebuilding
    the cumulative table on every draw, which dominates generation time for millions of words.
    """

    def __init__(
        self, items: Sequence[str], rng: random.Random, exponent: float = 1.0, *, shuffle: bool = True
    ) -> None:
        if not items:
            raise ValueError("Zipf needs at least one item")
        order = list(items)
        if shuffle:
            rng.shuffle(order)
        self.items = order
        self.cum = list(itertools.accumulate(1.0 / (r + 1) ** exponent for r in range(len(order))))

    def draw(self, rng: random.Random) -> str:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


def in_heldout(salt: str, key: str, fraction: float) -> bool:
    """Whether ``key`` belongs to the held-out bucket.

    A stable hash (not Python's salted ``hash``) partitions the item space once and for all: training
    generation rejects held-out keys and evaluation accepts only them, so the splits share no item by
    construction, however many documents either side draws.
    """
    digest = hashlib.blake2b(f"{salt}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64
