"""``benchmarks/run.py`` renders BENCHMARKS.md from the saved JSON, GPU results included when present."""

from __future__ import annotations

from benchmarks import run

MACHINE = {"cpu": "cpu", "cores": 2, "torch_threads": 2, "python": "3.11", "torch": "2.x"}
LOSS_GPU = {
    "machine": {**MACHINE, "gpu": "NVIDIA H200"},
    "command": "python -m benchmarks.bench_loss_gpu --V 151936",
    "cases": [
        {
            "N": 4096,
            "H": 2048,
            "V": 151936,
            "ms": {"F.cross_entropy(h @ W.T)": 10.0, "fused shaped (CE)": 12.5},
            "time_ratio": {"F.cross_entropy(h @ W.T)": 1.0, "fused shaped (CE)": 1.25},
            "extra_peak_mib": {"F.cross_entropy(h @ W.T)": 4000.0, "fused shaped (CE)": 300.0},
            "memory_ratio": {"F.cross_entropy(h @ W.T)": 1.0, "fused shaped (CE)": 0.075},
        }
    ],
    "topk": [
        {
            "n": 256,
            "V": 151936,
            "k": 100,
            "g": 32,
            "ms": {"torch.topk": 0.4, "grouped": 0.3},
            "ratio": {"torch.topk": 1.0, "grouped": 0.75},
        }
    ],
}
MFU_GPU = {
    "gpu": "NVIDIA H200",
    "preset": "dense-1b",
    "tokens_per_s": 50000,
    "active_params": 10**9,
    "mfu": 0.303,
}


def test_gpu_results_are_rendered_when_present(monkeypatch, tmp_path):
    saved = {"loss_gpu": LOSS_GPU, "mfu_gpu": MFU_GPU}
    monkeypatch.setattr(run, "_load", saved.get)
    text = run.render(notes=tmp_path / "none.md")
    assert "## Loss on a GPU" in text and "Machine: NVIDIA H200" in text
    assert "| fused shaped (CE) | 12.5 | 1.25x | 300.0 | 0.075x |" in text
    assert "| 151936 | 256 | 32 | 0.4 | 0.3 | 0.75x |" in text
    assert "| mfu | 0.303 |" in text
    assert "## Training loop" not in text  # no train.json given


def test_nothing_saved_renders_only_the_header(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "_load", lambda name: None)
    assert run.render(notes=tmp_path / "none.md").count("## ") == 0
