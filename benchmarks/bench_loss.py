"""Loss benchmark: time of the shaped objective vs ``F.cross_entropy``, memory of the fused op.

    python -m benchmarks.bench_loss [--quick] [--sweep]

Time: forward + backward on fp32 logits ``[N, V]`` (a leaf tensor, as the LM head output would be), ratios
to ``F.cross_entropy`` measured round-robin in one process. The naive autograd versions (weights built with
``log_softmax``/``topk`` and a dense ``[N, V]`` weight matrix) are timed too, for context.

Top-k: ``torch.topk`` vs the grouped selection (``rlready.losses.select``) and the numba head kernel
(``rlready.losses.head_cpu``: the top-k with the head's sums and the row's ``p . z``, what the loss takes on
CPU) on one fused-op chunk of 2**20 logits at V in {2k, 8k, 32k, 152k}, k = 100.

Memory: extra peak resident memory of one forward + backward, each variant in a fresh process. CPU tensors
have no allocator statistics, so the kernel's high-water mark is used: it is reset once the inputs exist
(``/proc/self/clear_refs``), then ``VmHWM`` after the backward minus ``VmRSS`` before it is the extra peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_medians, machine, run_isolated, write_json
from rlready.losses import fused_linear_shaped_cross_entropy, select, shaped_cross_entropy
from rlready.losses.select import group_size, grouped_topk


def naive_shaped(z, t, beta=0.0, lam_head=0.0, lam_tail=0.0, k=100):
    """Direct autograd form of docs/method.md §4.1 (what the fused row math replaces)."""
    logp = torch.log_softmax(z, -1)
    with torch.no_grad():
        p = logp.exp()
        p_x = p.gather(1, t[:, None])
        w = lam_tail * p
        if lam_head != lam_tail:
            idx = torch.topk(p, min(k, z.shape[1]), -1).indices
            w.scatter_(1, idx, lam_head * p.gather(1, idx))
        w.scatter_(1, t[:, None], p_x ** (1 - (1 - p_x) ** beta))
    return -(w * logp).sum(-1).mean()


def naive_beta(z, t, beta):
    logp_x = torch.log_softmax(z, -1).gather(1, t[:, None]).squeeze(1)
    with torch.no_grad():
        p_x = logp_x.exp()
        w = p_x ** (1 - (1 - p_x) ** beta)
    return -(w * logp_x).mean()


def time_case(N: int, V: int, reps: int) -> dict:
    torch.manual_seed(0)
    z = (torch.randn(N, V) * 2).requires_grad_()
    t = torch.randint(0, V, (N,))

    def step(fn):
        def run():
            fn(z, t).backward()
            z.grad = None

        return run

    variants = {
        "F.cross_entropy": step(lambda z, t: F.cross_entropy(z, t)),
        "shaped beta=-0.25": step(lambda z, t: shaped_cross_entropy(z, t, beta=-0.25)),
        "shaped lam_tail=-0.1 k=100": step(lambda z, t: shaped_cross_entropy(z, t, lam_tail=-0.1, k=100)),
        "shaped beta=-0.25 lam_head=0.1 lam_tail=-0.1": step(
            lambda z, t: shaped_cross_entropy(z, t, beta=-0.25, lam_head=0.1, lam_tail=-0.1, k=100)
        ),
        "naive beta=-0.25": step(lambda z, t: naive_beta(z, t, -0.25)),
        "naive lam_tail=-0.1 k=100": step(lambda z, t: naive_shaped(z, t, lam_tail=-0.1)),
    }
    med = interleaved_medians(variants, reps)
    base = med["F.cross_entropy"]
    return {
        "N": N,
        "V": V,
        "ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "ratio": {k: round(v / base, 3) for k, v in med.items()},
    }


def topk_case(V: int, k: int, reps: int) -> dict:
    """``torch.topk`` vs the grouped selection and the head kernel on one fused-op chunk of logits."""
    torch.manual_seed(0)
    n = max(1, 2**20 // V)  # the fused op's smallest chunk: 2**20 logits
    z = torch.randn(n, 128) @ (torch.randn(V, 128) * 0.05).T  # logits shaped like an LM head's
    p = torch.softmax(z, -1)
    t = torch.randint(0, V, (n,))
    g = group_size(V, k)
    variants = {
        "torch.topk": lambda: torch.topk(z, k, dim=-1, sorted=False),
        "grouped": lambda: grouped_topk(z, k, g),
    }
    kernel = select._head_cpu()
    if kernel is not None:
        variants["head kernel"] = lambda: kernel(z, p, t, k)
    # The first calls in a process pay for fresh allocations, thread start-up and loading the compiled kernel.
    med = interleaved_medians(variants, reps, warmup=10)
    base = med["torch.topk"]
    return {
        "n": n,
        "V": V,
        "k": k,
        "g": g,
        "ms": {name: round(v * 1e3, 3) for name, v in med.items()},
        "ratio": {name: round(v / base, 3) for name, v in med.items()},
    }


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (the memory benchmark needs Linux)")


def memory_child(variant: str, N: int, H: int, V: int) -> dict:
    """Runs in a fresh process: extra peak RSS (MiB) of one forward + backward of ``variant``."""
    torch.manual_seed(0)
    h = (torch.randn(N, H) * 0.5).requires_grad_()
    w = (torch.randn(V, H) * 0.05).requires_grad_()
    t = torch.randint(0, V, (N,))
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    if variant == "F.cross_entropy(h @ W.T)":
        loss = F.cross_entropy(h @ w.T, t)
    elif variant == "fused shaped (CE)":
        loss = fused_linear_shaped_cross_entropy(h, w, t)
    elif variant == "fused shaped (beta=-0.25, lam_tail=-0.1)":
        loss = fused_linear_shaped_cross_entropy(h, w, t, beta=-0.25, lam_tail=-0.1, k=100)
    elif variant == "unfused shaped (beta=-0.25, lam_tail=-0.1)":
        loss = shaped_cross_entropy(h @ w.T, t, beta=-0.25, lam_tail=-0.1, k=100)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    loss.backward()
    return {"variant": variant, "extra_peak_mib": round((_rss_kib("VmHWM") - before) / 1024, 1)}


MEMORY_VARIANTS = (
    "F.cross_entropy(h @ W.T)",
    "unfused shaped (beta=-0.25, lam_tail=-0.1)",
    "fused shaped (CE)",
    "fused shaped (beta=-0.25, lam_tail=-0.1)",
)


def memory_case(N: int, H: int, V: int) -> dict:
    rows = {
        v: run_isolated("benchmarks.bench_loss", ["--memory-child", v, str(N), str(H), str(V)])
        for v in MEMORY_VARIANTS
    }
    base = rows["F.cross_entropy(h @ W.T)"]["extra_peak_mib"]
    return {
        "N": N,
        "H": H,
        "V": V,
        "extra_peak_mib": {v: r["extra_peak_mib"] for v, r in rows.items()},
        "ratio": {v: round(r["extra_peak_mib"] / base, 3) for v, r in rows.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--sweep", action="store_true", help="also V in {8k, 32k, 128k} and several N")
    ap.add_argument("--memory-child", nargs=4, metavar=("VARIANT", "N", "H", "V"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        v, N, H, V = args.memory_child
        print(json.dumps(memory_child(v, int(N), int(H), int(V))))
        return {}
    reps = 5 if args.quick else 15
    cases = [(1024, 32768)]
    if args.sweep:
        cases += [(4096, 8192), (1024, 8192), (256, 131072), (1024, 131072), (4096, 32768)]
    result = {
        "machine": machine(),
        "command": "python -m benchmarks.bench_loss"
        + (" --sweep" if args.sweep else "")
        + (" --quick" if args.quick else ""),
        "time": [time_case(N, V, reps if N * V <= 2**25 else max(3, reps // 3)) for N, V in cases],
        "topk": [topk_case(V, 100, 3 * reps) for V in (2048, 8192, 32768, 151936)],
        "memory": [memory_case(4096, 256, 32768)],
    }
    for case in result["time"]:
        print(f"\nforward+backward, fp32 logits N={case['N']} V={case['V']}  (median of interleaved reps)")
        for name, ms in case["ms"].items():
            print(f"  {name:<48} {ms:9.1f} ms   {case['ratio'][name]:.2f}x")
    print("\ntop-k selection, k=100, one chunk of 2**20 logits  (median of interleaved reps)")
    for case in result["topk"]:
        line = "   ".join(f"{name} {ms:.2f} ms {case['ratio'][name]:.2f}x" for name, ms in case["ms"].items())
        print(f"  V={case['V']:<7} n={case['n']:<4} g={case['g']:<3} {line}")
    for case in result["memory"]:
        print(f"\nextra peak memory, N={case['N']} H={case['H']} V={case['V']}  (fresh process each)")
        for name, mib in case["extra_peak_mib"].items():
            print(f"  {name:<48} {mib:9.1f} MiB  {case['ratio'][name]:.3f}x")
    print(f"\nwrote {write_json('loss', result)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
