"""Rollout benchmark: generated tokens/s of the RL sampler vs plain ``model.generate`` with the same settings.

    python -m benchmarks.bench_rollout [--quick]

The RL sampler (``CachedSampler``), the ``hf`` backend and plain ``generate`` sample ``n`` completions for each of
the same prompts (synthetic reasoning problems) from the same tiny model at temperature 1.0 with the same
``max_new_tokens``; variants interleaved, medians reported. Both backends run as RL runs them, each group from
its own random stream (``seeds``), and with one stream for the whole batch, which shows what the per-group
streams cost (the ``hf`` backend then runs greedy search over a logits processor that draws the tokens).
Generated tokens count each completion up to and including its EOS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.common import machine, write_json


def _setup(vocab: int = 2048):
    from rlready.data.world import World, WorldConfig
    from rlready.models import build_config, build_model

    torch.manual_seed(0)
    model = build_model(build_config("tiny", vocab_size=vocab))
    model.eval()
    from transformers import PreTrainedTokenizerFast

    from rlready.data.tokenizer import train_tokenizer

    world = World(WorldConfig())
    tok = train_tokenizer(world.documents("midtrain", n_chars=300_000), vocab)
    assert isinstance(tok, PreTrainedTokenizerFast)
    prompts = [p.prompt for p in world.reasoning_problems(32, split="train")]
    return model, tok, prompts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from rlready.rl.rollout import CachedSampler, HFRollout

    model, tok, prompts = _setup()
    n, max_new = 8, 48
    prompts = prompts[: 8 if args.quick else 16]
    eos = tok.eos_token_id
    cached, hf = CachedSampler(model, tok, gen_batch=256), HFRollout(model, tok, gen_batch=256)

    seeds = list(range(len(prompts)))

    def run(sampler, seeded: bool):
        def fn() -> int:
            groups = sampler.generate(prompts, n, max_new, 1.0, seeds=seeds if seeded else None)
            return sum(len(c.ids) for g in groups for c in g)

        return fn

    @torch.no_grad()
    def plain() -> int:
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True)
        gen = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new,
            num_return_sequences=n,
            pad_token_id=eos,
            eos_token_id=eos,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        count = 0
        for row in new.tolist():
            count += row.index(eos) + 1 if eos in row else len(row)
        return count

    reps = 3 if args.quick else 7
    variants = (
        ("sampler", run(cached, True)),
        ("sampler, one stream", run(cached, False)),
        ("hf backend", run(hf, True)),
        ("hf backend, one stream", run(hf, False)),
        ("model.generate", plain),
    )
    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _, fn in variants:
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in variants:
            start = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "machine": machine(),
        "command": "python -m benchmarks.bench_rollout" + (" --quick" if args.quick else ""),
        "setting": f"tiny model, {len(prompts)} prompts x {n} samples, max_new_tokens {max_new}, temperature 1.0",
        "RL sampler (rl.backend cached, per-group streams) tokens/s": round(med["sampler"]),
        "RL sampler, one stream for the batch, tokens/s": round(med["sampler, one stream"]),
        "rl.backend hf (per-group streams: greedy search over a drawing logits processor) tokens/s": round(
            med["hf backend"]
        ),
        "rl.backend hf, one stream for the batch, tokens/s": round(med["hf backend, one stream"]),
        "plain model.generate tokens/s": round(med["model.generate"]),
        "ratio sampler / model.generate": round(med["sampler"] / med["model.generate"], 3),
        "ratio per-group streams / one stream (sampler)": round(
            med["sampler"] / med["sampler, one stream"], 3
        ),
        "ratio per-group streams / one stream (hf)": round(
            med["hf backend"] / med["hf backend, one stream"], 3
        ),
    }
    for k, v in result.items():
        if k != "machine":
            print(f"{k}: {v}")
    print(f"wrote {write_json('rollout', result)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
