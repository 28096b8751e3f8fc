"""The head terms of one block of logit rows on CPU, in one numba kernel (docs/method.md §4.7).

The shaped loss needs, per row, the top-k set ``K_t`` and a few sums over it. ``torch.topk`` on CPU copies
every row into (value, index) pairs and runs ``nth_element`` with a NaN-aware comparator; at the tiny
preset (``V = 2048``, ``k = 100``) selecting the head that way costs more than the
softmax and the LM-head matmul of the same chunk together. No library has a faster exact CPU top-k for
PyTorch tensors, so this module compiles one with numba (JIT, cached on disk) and computes the head's sums
in the same passes. Per row, rows spread over ``torch.get_num_threads()`` threads:

1. the maxima of ``G = V // g`` strided groups (group ``j`` holds columns ``j, j + G, ...``; ``g = V // 2k``,
   so ``G >= 2k``), and ``sum_a p_a z_a`` (the tail term's dot product; NaN when the row holds a NaN);
2. every logit is compared as an unsigned integer key with the float's order: its bits with the sign bit
   flipped for non-negatives and all bits flipped for negatives; on rows with a NaN every NaN maps to the
   largest key, which is ``torch.topk``'s order (NaN above ``+inf``);
3. ``L``, a lower bound of the k-th largest group maximum, from a bit-by-bit search over the top bits of
   the maxima's keys. At least ``k`` groups hold a logit ``>= L``, so the k-th largest logit ``tau`` is
   ``>= L``;
4. one pass keeps the logits with key ``>= L`` (on ordinary rows about ``1.3 k`` of them; every logit above
   ``tau`` is among them), without a branch;
5. ``tau``'s key: the largest ``t`` with at least ``k`` candidate keys ``>= t``, set bit by bit from the top
   (one count over the candidates per bit: no sort, no data-dependent branch);
6. the head: the candidates above ``tau``, then candidates equal to ``tau`` until there are ``k``; with it
   the head's probabilities, their sum and ``sum p z`` over the head, the row maximum and whether the target
   is in the head.

The head's values equal ``torch.topk``'s; among logits tied at ``tau`` either may take different indices
(every term of the loss is the same whichever tied logit is taken). Measured in BENCHMARKS.md (the top-k
selection table under "Loss").

numba is optional (``pip install "rlready[cpu]"``); without it ``select.head_terms`` uses ``torch.topk``.
"""

from __future__ import annotations

import ctypes
import threading

import numba
import numpy as np
import torch

from .head import Head

# Top bits of the key searched for the bound L (step 3): sign, exponent and the first mantissa bits. Fewer
# bits make that search cheaper and L lower (more candidates in step 4); L is a valid bound either way.
_COARSE_BITS = {torch.float32: 16, torch.float64: 20}


def _constants(dtype: torch.dtype) -> tuple:
    """``(uint type, c, coarse stop bit, float zero)`` for ``dtype``: ``c`` as ``_key`` takes it."""
    u = {torch.float32: np.uint32, torch.float64: np.uint64}[dtype]
    width = np.dtype(u).itemsize * 8
    sign = u(1) << u(width - 1)
    inf = u(torch.tensor(float("inf"), dtype=dtype).view(torch.int32 if width == 32 else torch.int64).item())
    c = (u(0), u(1), sign, ~u(0), inf, sign - u(1))
    fzero = torch.zeros((), dtype=dtype).numpy()[()]
    return u, c, u(1) << u(width - _COARSE_BITS[dtype]), fzero


_CONSTANTS = {dtype: _constants(dtype) for dtype in _COARSE_BITS}


def _threads() -> int:
    """The kernel's threads: PyTorch's, as far as numba's pool has them."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


_pool_lock = threading.Lock()
_pool_started = False


_OMP_CALLS = (
    "omp_get_nested",
    "omp_set_nested",
    "omp_get_max_active_levels",
    "omp_set_max_active_levels",
    "omp_set_num_threads",
)


def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime that ``omp_*`` calls resolve to in this process (PyTorch's libgomp, which numba's
    pool binds to as well), or None where the symbols cannot be looked up."""
    try:
        lib = ctypes.CDLL(None)
        for name in _OMP_CALLS:
            getattr(lib, name)
    except (OSError, TypeError, AttributeError):
        return None
    return lib


def _start_threads() -> None:
    """Start numba's thread pool, once, and leave PyTorch's threading as it was.

    numba's OpenMP pool binds to the OpenMP runtime PyTorch loaded, and starting it sets that runtime's
    thread count to ``NUMBA_NUM_THREADS`` (all cores) and its nesting settings. Left so, two one-thread
    processes under ``torchrun`` on two cores each ran two PyTorch threads, and the loop ran at a third of
    its speed. The settings are put back through the runtime itself, not ``torch.set_num_threads``: that
    also switches MKL's dynamic threading off, so the process would run its matmuls one way before the
    kernel's first call and another way after it. The first call comes with the first step that needs the
    head (with a loss that has no top-k terms: the first logging step), which in a run resumed from a
    checkpoint is a later step than in an uninterrupted one, so the two would compute the steps in between
    differently: with more than one thread, a resumed run would not end with the same weights.
    ``torch.set_num_threads`` remains the fallback where the runtime cannot be reached. The pool starts on
    the kernel's first call, not at import, so that importing the loss touches no thread count. The lock
    makes a concurrent first call wait until the settings are back, rather than read the pool's.
    """
    global _pool_started
    with _pool_lock:
        if not _pool_started:
            threads = torch.get_num_threads()
            omp = _openmp()
            nesting = (omp.omp_get_nested(), omp.omp_get_max_active_levels()) if omp is not None else None
            numba.set_num_threads(_threads())  # starts the pool
            if omp is not None and nesting is not None:
                omp.omp_set_nested(nesting[0])  # first: in newer runtimes it also sets the active levels
                omp.omp_set_max_active_levels(nesting[1])
                omp.omp_set_num_threads(threads)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            _pool_started = True


@numba.njit(cache=True, nogil=True, inline="always")
def _key(x, c, nan_row):
    """Order-preserving unsigned key of the float with bits ``x``; on a ``nan_row`` every NaN gets the largest.

    ``c = (zero, one, sign bit, all ones, bits of +inf, abs mask)`` in ``x``'s type: numba widens mixed
    signed/unsigned 64-bit integer arithmetic to float, so no literal meets ``x``. Without the NaN test a
    positive NaN already sorts above ``+inf`` but a negative one (``inf - inf`` on x86) below ``-inf``; the
    test is left to rows that hold a NaN, because it keeps the loops from being vectorised.
    """
    zero, one, sign, ones, inf, absmask = c
    key = x ^ ones if x & sign else x ^ sign
    if nan_row:
        return ones if (x & absmask) > inf else key
    return key


@numba.njit(cache=True, nogil=True, inline="always")
def _kth_key(keys, n, k, stop, c):
    """Largest ``t`` with at least ``k`` of ``keys[:n] >= t``, set bit by bit from the top bit down to ``stop``."""
    zero, one, sign, ones, inf, absmask = c
    t = zero
    bit = sign
    while bit >= stop:
        cand = t | bit
        count = 0
        for j in range(n):
            count += keys[j] >= cand
        if count >= k:
            t = cand
        bit >>= one
        if bit == zero:
            break
    return t


@numba.njit(cache=True, nogil=True, inline="always")
def _candidates(maxima, row, k, coarse_stop, c, nan_row, max_key, cand_key, cand_col):
    """Steps 2-4 for one row (``maxima``, ``row``: float bits): the candidates' keys and columns; returns
    how many there are."""
    for j in range(maxima.shape[0]):
        max_key[j] = _key(maxima[j], c, nan_row)
    bound = _kth_key(max_key, maxima.shape[0], k, coarse_stop, c)
    m = 0
    for j in range(row.shape[0]):  # without a branch: every key is written, the count moves on a hit
        key = _key(row[j], c, nan_row)
        cand_key[m] = key
        cand_col[m] = j
        m += key >= bound
    return m


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _head_rows(z, bits, p, targets, k, g, coarse_stop, c, fzero, rows_per_task, idx, head_p, sums, in_head):
    """Fill ``idx``/``head_p`` ``[n, k]``, ``sums [n, 5]`` (head mass, head ``p z``, row ``p z``, row maximum and
    its ``p``) and ``in_head [n]`` for rows ``z`` (``bits``: the same memory as uints)."""
    n, V = z.shape
    G = V // g
    tasks = (n + rows_per_task - 1) // rows_per_task
    for task in numba.prange(tasks):
        maxima = np.empty(G, dtype=z.dtype)
        max_key = np.empty(G, dtype=bits.dtype)
        cand_key = np.empty(V, dtype=bits.dtype)
        cand_col = np.empty(V, dtype=np.int32)
        for i in range(task * rows_per_task, min(n, (task + 1) * rows_per_task)):
            zi, pi, ui = z[i], p[i], bits[i]
            # Step 1. A float maximum skips NaN (unless the group starts with one): a group's maximum is still
            # one of its logits, which is all the bound needs.
            for j in range(G):
                maxima[j] = zi[j]
            for s in range(1, g):
                for j in range(G):
                    x = zi[s * G + j]
                    maxima[j] = x if x > maxima[j] else maxima[j]
            pz = fzero  # in z's dtype, summed in vector lanes (fastmath "reassoc"), as torch's sum does
            for j in range(V):
                pz += pi[j] * zi[j]
            nan_row = pz != pz  # a NaN logit makes p z NaN (so does a NaN p, from a +inf logit)
            # Steps 2-4. The NaN test is a constant in each call, so each loop is compiled without it or with it.
            mb = maxima.view(bits.dtype)
            if nan_row:
                m = _candidates(mb, ui, k, coarse_stop, c, True, max_key, cand_key, cand_col)
            else:
                m = _candidates(mb, ui, k, coarse_stop, c, False, max_key, cand_key, cand_col)
            tau = _kth_key(cand_key, m, k, c[1], c)  # step 5, down to the last bit
            # Step 6: above tau, then ties at tau up to k.
            o = 0
            best = 0
            for j in range(m):
                if cand_key[j] > tau:
                    idx[i, o] = cand_col[j]
                    o += 1
                    if cand_key[j] > cand_key[best]:
                        best = j
            for j in range(m):
                if o == k:
                    break
                if cand_key[j] == tau:
                    idx[i, o] = cand_col[j]
                    o += 1
                    if cand_key[j] > cand_key[best]:
                        best = j
            mass = 0.0
            hpz = 0.0
            hit = False
            t = targets[i]
            for o in range(k):
                col = idx[i, o]
                pc = pi[col]
                head_p[i, o] = pc
                mass += pc
                hpz += np.float64(pc) * zi[col]
                hit |= col == t
            sums[i, 0] = mass
            sums[i, 1] = hpz
            sums[i, 2] = pz
            sums[i, 3] = zi[cand_col[best]]
            sums[i, 4] = pi[cand_col[best]]
            in_head[i] = hit


def head_rows(z: torch.Tensor, p: torch.Tensor, targets: torch.Tensor, k: int) -> Head:
    """The head of CPU float32/float64 rows ``z [n, V]`` with softmax ``p``, targets in ``[0, V)``."""
    n, V = z.shape
    z, p = z.detach().contiguous(), p.detach().contiguous()
    u, c, coarse_stop, fzero = _CONSTANTS[z.dtype]
    idx = torch.empty((n, k), dtype=torch.int64)
    head_p = torch.empty((n, k), dtype=z.dtype)
    sums = torch.empty((n, 5), dtype=z.dtype)
    in_head = torch.empty(n, dtype=torch.bool)
    if n:
        zn = z.numpy()
        _start_threads()
        threads = _threads()
        numba.set_num_threads(threads)
        _head_rows(
            zn,
            zn.view(u),
            p.numpy(),
            targets.detach().contiguous().numpy(),
            k,
            max(1, V // (2 * k)),
            coarse_stop,
            c,
            fzero,
            # Tasks of up to 16 rows share one set of buffers; with few rows (large V) every thread gets some.
            max(1, min(16, n // (4 * threads))),
            idx.numpy(),
            head_p.numpy(),
            sums.numpy(),
            in_head.numpy(),
        )
    mass, head_pz, pz_all, z_max, p_max = sums.unbind(1)
    return Head(idx, head_p, mass, head_pz, z_max, p_max, in_head, pz_all)
