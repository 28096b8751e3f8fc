"""The head ``K_t`` of the local-entropy terms (docs/method.md §4.7): each row's exact top-k and its sums.

``head_terms`` is what the loss calls. On CPU with numba installed it is one compiled kernel
(``head_cpu``); elsewhere (GPUs, installs without numba) it is ``head_topk`` plus a few ``[n, k]`` ops.

``torch.topk`` on CPU copies every row into (value, index) pairs and runs ``nth_element`` on them: for the
tiny preset (``V = 2048``, ``k = 100``) that costs more than the softmax and the LM-head matmul of the same
chunk together. Without numba, ``head_topk`` gives the same result on CPU with two much
narrower ``topk`` calls (BENCHMARKS.md, the top-k selection table under "Loss"):

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

import functools
import math

import torch

from .head import Head


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


@functools.cache
def _head_cpu():
    """``head_cpu.head_rows``, or None without numba (imported on first use: numba takes a fraction of a second)."""
    try:
        from . import head_cpu
    except ImportError:
        return None
    return head_cpu.head_rows


@torch.compiler.disable  # a numba call on NumPy views: torch.compile runs it eagerly, between two graphs
def _head_terms_cpu(z: torch.Tensor, p: torch.Tensor, targets: torch.Tensor, k: int) -> Head | None:
    kernel = _head_cpu()
    return None if kernel is None else kernel(z, p, targets, k)


def head_terms(z: torch.Tensor, p: torch.Tensor, targets: torch.Tensor, k: int) -> Head:
    """The head of logit rows ``z [n, V]`` with softmax ``p``, ``targets [n]`` in ``[0, V)``, ``1 <= k <= V``.

    On CPU (float32/float64, numba installed) one kernel computes it all (``head_cpu``); elsewhere
    ``head_topk`` and a few ``[n, k]`` ops.
    """
    if z.device.type == "cpu" and z.dtype in (torch.float32, torch.float64):
        head = _head_terms_cpu(z, p, targets, k)
        if head is not None:
            return head
    head_z, idx = head_topk(z, k)
    head_p = p.gather(1, idx)
    z_max, top = head_z.max(dim=-1, keepdim=True)
    return Head(
        idx=idx,
        p=head_p,
        mass=head_p.sum(-1),
        pz=(head_p * head_z).sum(-1),
        z_max=z_max.squeeze(1),
        p_max=head_p.gather(1, top).squeeze(1),
        in_head=(idx == targets[:, None]).any(-1),
        pz_all=None,
    )
