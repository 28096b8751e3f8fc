"""PackedBatches: window layout, per-epoch shuffling, exact rank sharding and exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rlready.data.loader import PackedBatches, document_positions

L = 8  # seq_len
TOKENS = np.arange(1 + L * 61, dtype=np.int64)  # 61 windows; token value = position, so layout is checkable


def take(loader: PackedBatches, n: int) -> list[torch.Tensor]:
    return list(itertools.islice(loader, n))


def window_ids(batch: torch.Tensor) -> list[int]:
    return [int(row[0]) // L for row in batch]


def test_rows_are_contiguous_windows_with_next_token() -> None:
    batch = next(PackedBatches(TOKENS, L, 4))
    assert batch.dtype == torch.long and batch.shape == (4, L + 1)
    for row in batch:
        start = int(row[0])
        assert start % L == 0
        assert torch.equal(row, torch.arange(start, start + L + 1))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_epoch_visits_each_window_once_and_reshuffles() -> None:
    loader = PackedBatches(TOKENS, L, 4, seed=1)
    assert loader.steps_per_epoch == 61 // 4
    epoch0 = [w for b in take(loader, loader.steps_per_epoch) for w in window_ids(b)]
    epoch1 = [w for b in take(loader, loader.steps_per_epoch) for w in window_ids(b)]
    assert len(set(epoch0)) == len(epoch0) == 60  # one window dropped: 61 is not a multiple of 4
    assert set(epoch0) <= set(range(61))
    assert epoch0 != epoch1 and len(set(epoch1)) == 60
    assert loader.epoch == 2 and loader.step == 0


def test_deterministic_given_seed() -> None:
    a = take(PackedBatches(TOKENS, L, 4, seed=5), 20)
    b = take(PackedBatches(TOKENS, L, 4, seed=5), 20)
    c = take(PackedBatches(TOKENS, L, 4, seed=6), 20)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 3), (3, 2), (4, 1)])
def test_union_over_ranks_equals_single_process(world_size: int, batch_size: int) -> None:
    n = 25  # crosses the epoch boundary (61 // 6 = 10 steps per epoch)
    single = take(PackedBatches(TOKENS, L, batch_size * world_size, seed=3), n)
    ranks = [
        take(PackedBatches(TOKENS, L, batch_size, rank=r, world_size=world_size, seed=3), n)
        for r in range(world_size)
    ]
    for step in range(n):
        assert torch.equal(torch.cat([ranks[r][step] for r in range(world_size)]), single[step])
    # Disjoint across ranks within an epoch.
    steps = PackedBatches(TOKENS, L, batch_size, world_size=world_size).steps_per_epoch
    seen = [w for r in range(world_size) for b in ranks[r][:steps] for w in window_ids(b)]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("stop", [3, 14, 15, 22])  # mid-epoch, last step of the epoch, epoch start, later
def test_resume_continues_with_identical_batches(stop: int) -> None:
    reference = take(PackedBatches(TOKENS, L, 4, seed=9), stop + 10)
    first = PackedBatches(TOKENS, L, 4, seed=9)
    take(first, stop)
    state = first.state_dict()
    resumed = PackedBatches(TOKENS, L, 4, seed=9)
    resumed.load_state_dict(state)
    for expected, got in zip(reference[stop:], take(resumed, 10), strict=True):
        assert torch.equal(expected, got)


def test_resume_with_another_world_size_keeping_the_global_batch() -> None:
    reference = take(PackedBatches(TOKENS, L, 4, seed=2), 12)
    first = PackedBatches(TOKENS, L, 4, seed=2)
    take(first, 7)
    state = first.state_dict()
    halves = []
    for r in range(2):
        loader = PackedBatches(TOKENS, L, 2, rank=r, world_size=2, seed=2)
        loader.load_state_dict(state)
        halves.append(take(loader, 5))
    for i in range(5):
        assert torch.equal(torch.cat([halves[0][i], halves[1][i]]), reference[7 + i])


def test_epochs_limit_stops_iteration() -> None:
    loader = PackedBatches(TOKENS, L, 4, epochs=2)
    assert len(list(loader)) == 2 * loader.steps_per_epoch


def test_uint16_memmap_and_tensor_inputs(tmp_path) -> None:
    values = np.arange(60000, 60000 + 1 + L * 8, dtype=np.uint16)  # above int16 range: no sign mix-ups
    path = tmp_path / "t.bin"
    values.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=values.shape)
    from_mm = take(PackedBatches(mm, L, 2, seed=4), 4)
    from_tensor = take(PackedBatches(torch.from_numpy(values.astype(np.int64)), L, 2, seed=4), 4)
    for a, b in zip(from_mm, from_tensor, strict=True):
        assert a.dtype == torch.long and torch.equal(a, b)
        assert int(a.min()) >= 60000


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((TOKENS.reshape(-1, 1), L, 2), {}, "1-D"),
        ((TOKENS.astype(np.float32), L, 2), {}, "integer dtype"),
        ((TOKENS, 0, 2), {}, "seq_len"),
        ((TOKENS, L, 0), {}, "batch_size"),
        ((TOKENS, L, 2), {"world_size": 0}, "world_size"),
        ((TOKENS, L, 2), {"rank": 2, "world_size": 2}, "rank"),
        ((TOKENS, L, 2), {"rank": -1}, "rank"),
        ((TOKENS, L, 2), {"epochs": 0}, "epochs"),
        ((TOKENS[: 4 * L], L, 4), {}, "too few tokens"),
        ((TOKENS[:0], L, 1), {}, "too few tokens"),
        (([1, 2, 3], 1, 1), {}, "1-D"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PackedBatches(*args, **kwargs)


def test_bad_state() -> None:
    loader = PackedBatches(TOKENS, L, 4)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        PackedBatches(TOKENS, L + 1, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        PackedBatches(TOKENS, L, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        PackedBatches(TOKENS, L, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="n_tokens"):
        PackedBatches(TOKENS[:-L], L, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="invalid position"):
        loader.load_state_dict({**state, "step": loader.steps_per_epoch})
    with pytest.raises(ValueError, match="invalid position"):
        loader.load_state_dict({**state, "epoch": -1})


def test_document_positions_restart_after_every_eos() -> None:
    eos = 1
    inputs = torch.tensor(
        [
            [5, 6, 1, 7, 8, 9, 1, 4],  # a window that starts inside a document
            [1, 2, 3, 1, 1, 5, 6, 7],  # EOS first, and an empty document (two EOS in a row)
            [3, 3, 3, 3, 3, 3, 3, 3],  # no EOS: one document
            [2, 2, 2, 2, 2, 2, 2, 1],  # EOS last: nothing after it in the window
        ]
    )
    want = [
        [0, 1, 2, 0, 1, 2, 3, 0],
        [0, 0, 1, 2, 0, 0, 1, 2],
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    assert document_positions(inputs, eos).tolist() == want


def test_document_positions_needs_a_batch() -> None:
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        document_positions(torch.tensor([1, 2, 3]), 1)
