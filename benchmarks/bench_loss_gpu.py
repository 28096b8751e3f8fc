"""GPU loss benchmark (not run on the CPU machines): time and peak memory of the fused shaped loss vs
``F.cross_entropy(h @ W.T)``, Liger-Kernel's fused linear cross-entropy and Cut Cross-Entropy, side by side.

    python -m benchmarks.bench_loss_gpu [--V 151936] [--N 4096,16384] [--H 2048]

bf16 hidden states and head weight, forward + backward, median of interleaved repetitions;
peak memory from ``torch.cuda.max_memory_allocated`` above the inputs. Liger (``liger-kernel``) and CCE
(``cut-cross-entropy``) are used when installed and skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from benchmarks.common import machine, write_json
from rlready.losses import fused_linear_shaped_cross_entropy
from rlready.losses.fused_linear import default_chunk_size
from rlready.losses.select import group_size, grouped_topk


def variants():
    out = {
        "F.cross_entropy(h @ W.T)": lambda h, w, t: F.cross_entropy((h @ w.T).float(), t),
        "fused shaped (CE)": lambda h, w, t: fused_linear_shaped_cross_entropy(h, w, t),
        "fused shaped (beta=-0.25, lam_tail=-0.1)": lambda h, w, t: fused_linear_shaped_cross_entropy(
            h, w, t, beta=-0.25, lam_tail=-0.1, k=100
        ),
    }
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        out["Liger fused linear CE"] = lambda h, w, t: liger(w, h, t)
    except ImportError:
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy

        out["Cut Cross-Entropy"] = lambda h, w, t: linear_cross_entropy(h, w, t)
    except ImportError:
        pass
    return out


def case(N: int, H: int, V: int, reps: int) -> dict:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    h = (torch.randn(N, H, device=dev) * 0.5).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(V, H, device=dev) * 0.02).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, V, (N,), device=dev)
    fns = variants()
    ms: dict[str, list[float]] = {k: [] for k in fns}
    mem: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up and peak memory, one variant at a time
        h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(h, w, t).backward()
        torch.cuda.synchronize()
        mem[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    for _ in range(reps):
        for name, fn in fns.items():
            h.grad = w.grad = None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(h, w, t).backward()
            end.record()
            torch.cuda.synchronize()
            ms[name].append(start.elapsed_time(end))
    base_ms, base_mem = statistics.median(ms["F.cross_entropy(h @ W.T)"]), mem["F.cross_entropy(h @ W.T)"]
    return {
        "N": N,
        "H": H,
        "V": V,
        "ms": {k: round(statistics.median(v), 2) for k, v in ms.items()},
        "time_ratio": {k: round(statistics.median(v) / base_ms, 3) for k, v in ms.items()},
        "extra_peak_mib": {k: round(v, 1) for k, v in mem.items()},
        "memory_ratio": {k: round(v / base_mem, 3) for k, v in mem.items()},
    }


def topk_case(N: int, H: int, V: int, k: int, reps: int) -> dict:
    """``torch.topk`` vs the grouped selection on one fused-op chunk: whether CUDA should take the grouped path
    too (``rlready.losses.select`` uses it on CPU only, where it was measured)."""
    n = default_chunk_size(N, V, H)
    z = torch.randn(n, V, device="cuda") * 2
    g = max(group_size(V, k), 2)
    fns = {
        "torch.topk": lambda: torch.topk(z, k, dim=-1, sorted=False),
        "grouped": lambda: grouped_topk(z, k, g),
    }
    ms: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            ms[name].append(start.elapsed_time(end))
    med = {name: statistics.median(v) for name, v in ms.items()}
    return {
        "n": n,
        "V": V,
        "k": k,
        "g": g,
        "ms": {name: round(v, 3) for name, v in med.items()},
        "ratio": {name: round(v / med["torch.topk"], 3) for name, v in med.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--V", type=int, default=151936)
    ap.add_argument("--H", type=int, default=2048)
    ap.add_argument("--N", default="4096,16384")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_loss_gpu needs a CUDA device")
    m = machine()
    m["gpu"] = torch.cuda.get_device_name()
    result = {
        "machine": m,
        "command": "python -m benchmarks.bench_loss_gpu " + " ".join(argv or []),
        "cases": [case(int(n), args.H, args.V, args.reps) for n in args.N.split(",")],
        "topk": [topk_case(int(n), args.H, args.V, 100, 5 * args.reps) for n in args.N.split(",")],
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_json('loss_gpu', result)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
