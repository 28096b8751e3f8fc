"""Packed, shuffled, rank-sharded, resumable batches over a flat token array.

The token stream (documents separated by EOS, see ``shards.py``) is cut into non-overlapping windows of
``seq_len`` tokens; each sample is a window plus the next token, so ``batch[:, :-1]`` are inputs and
``batch[:, 1:]`` targets with no token wasted at window boundaries. Documents are packed across windows,
as in GPT-style pre-training: attention may cross an EOS, which the model learns to treat as a reset, unless the
run keeps each document to itself (``data.document_attention``, ``document_positions``).

Every epoch shuffles the windows with a generator seeded by ``(seed, epoch)``; a global step takes the next
``batch_size * world_size`` windows of that order and rank ``r`` gets the ``r``-th slice of ``batch_size``.
So the union over ranks of a step is exactly the batch one process with ``batch_size * world_size`` sees,
and the whole position is two integers (epoch, step), which makes resuming exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class PackedBatches:
    """Iterator of ``torch.LongTensor [batch_size, seq_len + 1]`` batches; endless unless ``epochs`` is set.

    The remainder of an epoch that does not fill a whole global batch is dropped (a different subset each
    epoch, because the order is reshuffled), so every rank always takes the same number of steps.
    """

    def __init__(
        self,
        tokens: np.ndarray | torch.Tensor,
        seq_len: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epochs: int | None = None,
    ) -> None:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1:
            raise ValueError("tokens must be a 1-D numpy array or tensor of token ids")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must have an integer dtype, got {tokens.dtype}")
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("world_size", world_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epochs = epochs
        self.global_batch_size = batch_size * world_size
        self.n_windows = (len(tokens) - 1) // seq_len if len(tokens) > 0 else 0
        self.steps_per_epoch = self.n_windows // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"too few tokens: {len(tokens)} tokens make {self.n_windows} windows of {seq_len}+1, "
                f"fewer than one global batch of {self.global_batch_size}"
            )
        self.epoch = 0
        self.step = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(self.n_windows)
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        start = self.step * self.global_batch_size + self.rank * self.batch_size
        windows = self._epoch_order()[start : start + self.batch_size]
        span = self.seq_len + 1
        batch = np.stack([self.tokens[w * self.seq_len : w * self.seq_len + span] for w in windows])
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return torch.from_numpy(batch.astype(np.int64))

    def state_dict(self) -> dict[str, Any]:
        """The position (next epoch and step) plus what must match for it to mean the same data."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "n_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` left off. The world size may change if the global batch size
        stays the same: the position is global, so the union over ranks is unchanged."""
        mine = self.state_dict()
        for name in ("seed", "seq_len", "global_batch_size", "n_tokens"):
            if state.get(name) != mine[name]:
                raise ValueError(
                    f"loader state mismatch: {name} is {state.get(name)} in state, {mine[name]} here"
                )
        epoch, step = state.get("epoch"), state.get("step")
        if (
            not isinstance(epoch, int)
            or not isinstance(step, int)
            or epoch < 0
            or not 0 <= step < self.steps_per_epoch
        ):
            raise ValueError(f"loader state has an invalid position: epoch={epoch}, step={step}")
        self.epoch, self.step = epoch, step


def document_positions(inputs: torch.Tensor, eos: int) -> torch.Tensor:
    """Position ids of ``inputs`` [B, T] that restart at 0 after every EOS (docs/method.md §9).

    Passed as ``position_ids`` without an attention mask, they make transformers (4.54 and later) mask attention
    across every restart, as it does for packed sequences: each document of a window attends to itself only,
    under sdpa, eager and flex attention and flash-attention's varlen path alike. An EOS ends its document, so
    a document's first token sits at position 0 with nothing before it, as a prompt does when it is sampled. A
    window that starts inside a document sees that document's remainder alone.
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs must be [batch, time], got shape {tuple(inputs.shape)}")
    index = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    starts = torch.zeros_like(index)
    starts[:, 1:] = torch.where(inputs[:, :-1] == eos, index[:, 1:], 0)
    return index - torch.cummax(starts, dim=1).values


def packed_sequence_masks() -> bool:
    """Whether this transformers masks attention between the sequences that position ids mark as packed."""
    try:
        from transformers import masking_utils
    except ImportError:  # before 4.53
        return False
    return hasattr(masking_utils, "find_packed_sequence_indices")


def check_document_attention(cfg: Any) -> None:
    """Refuse ``data.document_attention`` (a ``RunConfig``'s) where transformers cannot mask packed documents."""
    if cfg.data.document_attention and not packed_sequence_masks():
        import transformers

        from rlready.config import ConfigError

        raise ConfigError(
            "data.document_attention needs transformers 4.54 or later (masks from packed position ids); "
            f"this is {transformers.__version__}: upgrade it or pass --data.document_attention false"
        )
