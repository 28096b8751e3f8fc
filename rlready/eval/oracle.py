"""The data's own next-token distributions, estimated from its tokens, and what each objective can reach on
them (docs/method.md §10).

``NgramOracle`` counts, for every context of up to ``order`` preceding tokens, which tokens follow it in the
training stream. A position is described by its longest context seen at least ``min_count`` times (backing
off to shorter ones, down to the unigram distribution), so every position has an estimate. The estimate of a
context's distribution ``q`` is its empirical next-token frequencies: with ``min_count`` occurrences a long
tail is under-sampled, so the oracle's entropy is a lower estimate where the tail is long and an upper one
where a short context mixes several longer ones. It is a yardstick for what the objective can do on the data,
not the data's true entropy.

``analyse`` solves the fixed point of every configuration on the oracle's contexts
(``rlready.eval.fixed_point``) and weights contexts by how many positions they describe. ``is_fork`` labels
positions of any token stream as forks (the likeliest continuation has probability below ``determ``) or
near-deterministic, which the LM evaluation uses to report entropy on each kind separately.

Plain numpy counting (sort and group) rather than a language-model toolkit: the project needs exact counts
of short contexts over a few million tokens, which sorting gives in about a second, with no extra dependency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlready.eval.fixed_point import fixed_point, shape_stats
from rlready.losses.schemes import TokenWeighting

DETERMINISTIC = 0.9  # a context whose likeliest token has at least this probability is near-deterministic
_KNOB_BAND = (0.2, 0.8)  # p in this band is where the beta weight differs most from 1 (§10)


@dataclass(frozen=True)
class _Table:
    """Counts for one context length: sorted context keys, their totals, and (key, next, count) runs."""

    keys: np.ndarray  # [contexts] sorted unique context keys
    totals: np.ndarray  # [contexts] occurrences of each context
    starts: np.ndarray  # [contexts + 1] offsets into next_tokens / counts
    next_tokens: np.ndarray  # [pairs] the tokens that followed, grouped by context
    counts: np.ndarray  # [pairs] how often


class NgramOracle:
    """Next-token frequencies of every context of length 0..``order`` in ``tokens`` (see module doc)."""

    def __init__(self, tokens: np.ndarray, vocab_size: int, *, order: int = 3, min_count: int = 20) -> None:
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size < 2:
            raise ValueError(f"oracle: need a 1-D stream of at least 2 tokens, got shape {tokens.shape}")
        if vocab_size < 2 or tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"oracle: token ids must lie in [0, {vocab_size})")
        if order < 0 or vocab_size ** max(order, 1) >= 2**62:
            raise ValueError(
                f"oracle: order {order} with vocabulary {vocab_size} does not fit 62-bit context keys"
            )
        if min_count < 1:
            raise ValueError(f"oracle: min_count must be >= 1, got {min_count}")
        self.vocab_size, self.order, self.min_count = vocab_size, order, min_count
        self.tokens = int(tokens.size)
        stream = tokens.astype(np.int64)
        self._tables = [self._count(stream, c) for c in range(order + 1)]
        # How each training position is described, and the probability of its actual next token there.
        self._length, self._row = self._describe(stream)
        self._q_next = self._probability_of(stream[order:], self._length, self._row)

    def _keys(self, stream: np.ndarray, c: int) -> np.ndarray:
        """Key of the ``c`` tokens before each position ``order..len-1`` (0 for the empty context)."""
        n = stream.size
        key = np.zeros(n - self.order, dtype=np.int64)
        for j in range(1, c + 1):
            key = key * self.vocab_size + stream[self.order - j : n - j]
        return key

    def _count(self, stream: np.ndarray, c: int) -> _Table:
        key, nxt = self._keys(stream, c), stream[self.order :]
        order = np.lexsort((nxt, key))
        key, nxt = key[order], nxt[order]
        new_pair = np.ones(key.size, dtype=bool)
        new_pair[1:] = (key[1:] != key[:-1]) | (nxt[1:] != nxt[:-1])
        pair_at = np.flatnonzero(new_pair)
        counts = np.diff(np.append(pair_at, key.size))
        pair_keys, pair_next = key[pair_at], nxt[pair_at]
        new_ctx = np.ones(pair_keys.size, dtype=bool)
        new_ctx[1:] = pair_keys[1:] != pair_keys[:-1]
        ctx_at = np.flatnonzero(new_ctx)
        totals = np.add.reduceat(counts, ctx_at)
        return _Table(pair_keys[ctx_at], totals, np.append(ctx_at, pair_keys.size), pair_next, counts)

    def _describe(self, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each position ``order..`` of ``stream``: the context length used and the context's row in
        that length's table (longest context seen at least ``min_count`` times)."""
        n = stream.size - self.order
        length = np.zeros(n, dtype=np.int64)
        row = np.zeros(n, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        for c in range(self.order, -1, -1):
            table = self._tables[c]
            key = self._keys(stream, c)
            at = np.searchsorted(table.keys, key).clip(max=table.keys.size - 1)
            ok = (table.keys[at] == key) & (table.totals[at] >= (self.min_count if c > 0 else 1)) & ~done
            length[ok], row[ok] = c, at[ok]
            done |= ok
        return length, row

    def _probability_of(self, nxt: np.ndarray, length: np.ndarray, row: np.ndarray) -> np.ndarray:
        out = np.zeros(nxt.size, dtype=np.float64)
        for c, t in enumerate(self._tables):
            sel = np.flatnonzero(length == c)
            r = row[sel]
            # Pairs are sorted by (context, next token): search each position's pair in its context's run.
            pair_ctx = np.repeat(np.arange(t.keys.size, dtype=np.int64), np.diff(t.starts))
            combined = pair_ctx * self.vocab_size + t.next_tokens
            at = np.searchsorted(combined, r * self.vocab_size + nxt[sel]).clip(max=combined.size - 1)
            hit = combined[at] == r * self.vocab_size + nxt[sel]
            out[sel] = np.where(hit, t.counts[at] / t.totals[r], 0.0)
        return out

    def distributions(self, c: int, rows: np.ndarray) -> torch.Tensor:
        """``q`` of the given contexts of length ``c`` as a zero-padded ``[len(rows), S]`` float64 tensor,
        each row sorted in decreasing probability."""
        t = self._tables[c]
        sizes = t.starts[rows + 1] - t.starts[rows]
        q = np.zeros((rows.size, int(sizes.max(initial=1))), dtype=np.float64)
        for i, (r, s) in enumerate(zip(rows, sizes, strict=True)):
            counts = t.counts[t.starts[r] : t.starts[r] + s]
            q[i, :s] = np.sort(counts)[::-1] / t.totals[r]
        return torch.from_numpy(q)

    def top_probability(self, stream: np.ndarray) -> np.ndarray:
        """The oracle's probability of the likeliest next token at each position ``order..`` of ``stream``."""
        length, row = self._describe(np.asarray(stream, dtype=np.int64))
        out = np.empty(length.size, dtype=np.float64)
        for c, t in enumerate(self._tables):
            sel = length == c
            r = row[sel]
            out[sel] = np.maximum.reduceat(t.counts, t.starts[:-1])[r] / t.totals[r]
        return out

    def is_fork(self, stream: np.ndarray) -> np.ndarray:
        """Boolean per position ``order..`` of ``stream``: the likeliest continuation has probability below
        ``DETERMINISTIC`` (a fork) rather than at or above it (near-deterministic)."""
        return self.top_probability(stream) < DETERMINISTIC


def position_kinds(oracle: NgramOracle, stream: np.ndarray) -> np.ndarray:
    """Per token of ``stream``: 1 for a fork, 0 for near-deterministic, -1 for the first ``order`` tokens,
    whose context the stream does not contain."""
    kinds = np.full(len(stream), -1, dtype=np.int8)
    kinds[oracle.order :] = oracle.is_fork(stream)
    return kinds


def analyse(oracle: NgramOracle, configs: Mapping[str, TokenWeighting]) -> dict[str, Any]:
    """The data's shape and every configuration's fixed point, as ``summary.json["fixed_point"]`` holds it.

    Positions of the training stream are grouped by the context that describes them; each group's
    distribution is solved once and weighted by its number of positions. Per configuration: entropy over all
    positions, over forks and over near-deterministic positions, tail mass and within-head entropy (the
    configuration's own ``k``). ``oracle``: the data's entropy (= the fixed point of cross-entropy), the share
    of forks, and the share of positions whose actual next token has probability in 0.2-0.8.
    """
    groups = _groups(oracle)
    weight_sum = sum(float(w.sum()) for _, w, _ in groups)
    out_configs: dict[str, dict[str, float]] = {}
    for name, weighting in configs.items():
        acc = {
            "entropy": 0.0,
            "entropy_fork": 0.0,
            "entropy_determ": 0.0,
            "tail_mass": 0.0,
            "head_entropy": 0.0,
        }
        fork_w = determ_w = 0.0
        for q, w, fork in groups:
            s = shape_stats(fixed_point(q, weighting), weighting.k)
            wt = torch.from_numpy(w)
            acc["entropy"] += float((s.entropy * wt).sum())
            acc["tail_mass"] += float((s.tail_mass * wt).sum())
            acc["head_entropy"] += float((s.head_entropy * wt).sum())
            acc["entropy_fork"] += float((s.entropy * wt)[fork].sum())
            acc["entropy_determ"] += float((s.entropy * wt)[~fork].sum())
            fork_w += float(wt[fork].sum())
            determ_w += float(wt[~fork].sum())
        out_configs[name] = {
            "entropy": acc["entropy"] / weight_sum,
            "entropy_fork": acc["entropy_fork"] / fork_w if fork_w else math.nan,
            "entropy_determ": acc["entropy_determ"] / determ_w if determ_w else math.nan,
            "tail_mass": acc["tail_mass"] / weight_sum,
            "head_entropy": acc["head_entropy"] / weight_sum,
        }
    return {
        "order": oracle.order,
        "min_count": oracle.min_count,
        "tokens": oracle.tokens,
        "oracle": _data_shape(oracle, groups, weight_sum),
        "configs": out_configs,
    }


def _groups(oracle: NgramOracle) -> list[tuple[torch.Tensor, np.ndarray, torch.Tensor]]:
    """(q, positions per context, fork flag) for every context that describes a training position, batched
    by support size (little padding)."""
    groups = []
    for c, t in enumerate(oracle._tables):
        rows, weights = np.unique(oracle._row[oracle._length == c], return_counts=True)
        if rows.size == 0:
            continue
        sizes = t.starts[rows + 1] - t.starts[rows]
        bucket = np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64)
        for b in np.unique(bucket):
            sel = bucket == b
            q = oracle.distributions(c, rows[sel])
            groups.append((q, weights[sel].astype(np.float64), q[:, 0] < DETERMINISTIC))
    return groups


def _data_shape(oracle: NgramOracle, groups: list, weight_sum: float) -> dict[str, float]:
    entropy = fork = 0.0
    for q, w, is_fork in groups:
        wt = torch.from_numpy(w)
        entropy += float((shape_stats(q, 1).entropy * wt).sum())
        fork += float(wt[is_fork].sum())
    lo, hi = _KNOB_BAND
    band = float(((oracle._q_next >= lo) & (oracle._q_next <= hi)).mean())
    return {"entropy": entropy / weight_sum, "fork_share": fork / weight_sum, "knob_band_share": band}
