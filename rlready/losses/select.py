"""Exact per-row top-k of the logits, the head ``K_t`` of the local-entropy terms (PAPER.md §3).

``torch.topk`` on CPU copies every row into (value, index) pairs and runs ``nth_element`` on them: for the
tiny preset (``V = 2048``, ``k = 100``) that is about 4 ns per logit, more than the softmax and the LM-head
matmul of the same chunk together. ``head_topk`` gives the same result with two much narrower ``topk``
calls (BENCHMARKS.md, the top-k selection table under "Loss"):

1. split the row into ``G = V // g`` strided groups of ``g`` logits (group ``j`` holds columns
   ``j, j + G, j + 2G, ...``) and take each group's maximum: an elementwise max of ``g`` contiguous slices;
2. ``topk`` of the ``G`` group maxima: the ``k`` best groups;
3. ``topk`` of the ``k * g`` logits of those groups (plus the ``V - G g`` columns outside every group).

Exact: the k best groups hold k distinct logits at least as large as ``L``, the k-th largest group maximum,
so the k-th largest logit ``tau`` is at least ``L``. A logit above ``tau`` is then above ``L``, and so is its
group's maximum: the group is among the k best. Logits equal to ``tau`` fill the rest of the head, and the
best groups' maxima supply enough of them. The values therefore match ``torch.topk``'s exactly; among tied
logits either may pick different indices. ``g`` is the largest power of two not above ``sqrt(V / k)``, which
balances the two ``topk`` widths ``V / g`` and ``k g``.

Only CPU takes the grouped path. CUDA's ``topk`` is a radix select with another cost model, and the grouped
form is unmeasured there (``benchmarks/gpu.sh`` times both).
"""

from __future__ import annotations

import math

import torch


def group_size(V: int, k: int) -> int:
    """``g`` for the grouped selection, or 1 when plain ``torch.topk`` is as good (``V`` too small for ``k``)."""
    if k < 1 or V // k < 4:
        return 1
    return 1 << int(math.log2(math.sqrt(V / k)))  # V / k >= 4, so at least 2


def grouped_topk(z: torch.Tensor, k: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unsorted top-``k`` values and indices along the last dim of ``z [n, V]`` in groups of ``g``."""
    n, V = z.shape
    G = V // g
    grouped = G * g
    zg = z[:, :grouped].view(n, g, G)  # zg[:, i, j] = z[:, i * G + j]: group j is column j of every slice
    _, best = torch.topk(zg.amax(1), k, dim=-1, sorted=False)  # [n, k] the k groups with the largest max
    # Column indices of the candidates: every member of the best groups, then the columns outside all groups.
    cols = (best[:, None, :] + torch.arange(0, grouped, G, device=z.device)[None, :, None]).view(n, g * k)
    if grouped < V:
        cols = torch.cat([cols, torch.arange(grouped, V, device=z.device).expand(n, V - grouped)], dim=1)
    values, pos = torch.topk(z.gather(1, cols), k, dim=-1, sorted=False)
    return values, cols.gather(1, pos)


def head_topk(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(z, k, dim=-1, sorted=False)`` for ``z [n, V]``: the grouped form on CPU when it helps."""
    g = group_size(z.shape[-1], k) if z.device.type == "cpu" else 1
    if g == 1:
        return torch.topk(z, k, dim=-1, sorted=False)
    return grouped_topk(z, k, g)
