"""Rollouts for RL: ``n`` sampled completions per prompt, as token ids and text, behind a small interface.

``RolloutBackend.generate(prompts, n, max_new_tokens, temperature, seeds=...)`` is all the trainer needs, so
the sampler can be swapped without touching the stage:

- ``HFRollout`` (default): ``transformers`` ``generate`` with its KV cache, batched with left padding, each
  sequence stopping at EOS (a batch ends once all its sequences have). Works on CPU and GPU.
- ``VLLMRollout``: vLLM's paged-attention engine, usually several times faster on a GPU. vLLM is an
  optional dependency (``pip install vllm``, CUDA only) and is imported only when this backend is chosen
  (``--rl.backend vllm``); the policy's weights are pushed into the engine before every rollout round.
  It cannot run on the CPU-only test machine, so it is not covered by the tests.

Random streams: with ``seeds`` (one per prompt, see :func:`stream_seed`) each prompt's group of ``n`` samples
draws from its own generator, so what a group samples depends on its seed and the weights only, not on which
other prompts share its batch, how many processes split a step, or what was sampled before (up to the
floating-point rounding of logits computed in batches of another shape). Without ``seeds`` every sample comes
from torch's global generator.

The log-probabilities used for the PPO ratio are *not* taken from the sampler: the trainer recomputes them
with the same forward pass it trains with, so the ratio is exactly 1 before the first update (samplers in
other precisions or kernels would otherwise bias it).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = [
    "CachedSampler",
    "Completion",
    "HFRollout",
    "RolloutBackend",
    "VLLMRollout",
    "make_backend",
    "stream_seed",
]


def stream_seed(*parts: object) -> int:
    """A 63-bit seed for the random stream named by ``parts`` (e.g. ``("rl", seed, step, group)``): unrelated
    streams for any two names, the same stream for the same name in every process."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Completion:
    """One sampled response. ``ids`` includes the EOS token when the response finished; ``truncated`` is
    true when it hit ``max_new_tokens`` without EOS."""

    prompt_ids: list[int]
    ids: list[int]
    text: str
    truncated: bool


class RolloutBackend(Protocol):
    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``n`` completions for every prompt, in prompt order (``top_p`` < 1: nucleus sampling; ``seeds``:
        each prompt's random stream, see the module doc)."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the sampler use ``model``'s current weights (a no-op when it samples with ``model``)."""
        ...


def _cut(row: list[int], eos: int) -> tuple[list[int], bool]:
    """Completion tokens up to and including the first EOS; truncated when there is none.

    ``generate`` pads a row only after its EOS, so a row without EOS is all sampled tokens
    (``max_new_tokens`` of them).
    """
    if eos in row:
        return row[: row.index(eos) + 1], False
    return row, True


class HFRollout:
    """Sampling with ``model.generate`` (KV cache, left padding, ``gen_batch`` sequences per call)."""

    def __init__(self, model: Any, tokenizer: Any, *, gen_batch: int = 256) -> None:
        if gen_batch < 1:
            raise ValueError(f"{type(self).__name__}: gen_batch must be >= 1, got {gen_batch}")
        self.model, self.tokenizer, self.gen_batch = model, tokenizer, gen_batch

    def sync_weights(self, model: Any) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"generate: n and max_new_tokens must be >= 1, got {n}, {max_new_tokens}")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")
        tok, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        tok.padding_side = "left"
        out: list[list[Completion]] = []
        per_call = max(1, self.gen_batch // n)
        for start in range(0, len(prompts), per_call):
            enc = tok(list(prompts[start : start + per_call]), return_tensors="pt", padding=True).to(device)
            rows = self._sample(
                enc["input_ids"],
                enc["attention_mask"],
                n,
                max_new_tokens,
                temperature,
                top_p,
                None if seeds is None else seeds[start : start + per_call],
            )
            for i, prompt_row in enumerate(enc["input_ids"].tolist()):
                mask = enc["attention_mask"][i].tolist()
                prompt_ids = [t for t, m in zip(prompt_row, mask, strict=True) if m]
                group = []
                for ids, truncated in rows[i * n : (i + 1) * n]:
                    group.append(
                        Completion(prompt_ids, ids, tok.decode(ids, skip_special_tokens=True), truncated)
                    )
                out.append(group)
        model.train(was_training)
        return out

    def _sample(
        self, ids, attn, n, max_new_tokens, temperature, top_p, seeds
    ) -> list[tuple[list[int], bool]]:
        """``n`` rows per prompt of ``(completion ids up to and including EOS, truncated)``.

        With ``seeds``, ``generate`` runs greedy over a logits processor that draws each row's token itself
        (:class:`_StreamDraw`): ``generate`` samples a batch from torch's one global generator."""
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        common = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        if seeds is None:
            kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=n)
        else:
            from transformers import LogitsProcessorList

            # Greedy search refuses several sequences per prompt: each prompt's row is repeated instead.
            ids, attn = ids.repeat_interleave(n, dim=0), attn.repeat_interleave(n, dim=0)
            draw = _StreamDraw(
                _uniforms(seeds, n, max_new_tokens, ids.device), ids.shape[1], temperature, top_p
            )
            kw = dict(do_sample=False, logits_processor=LogitsProcessorList([draw]))
        gen = self.model.generate(input_ids=ids, attention_mask=attn, **common, **kw)
        return [_cut(row, eos) for row in gen[:, ids.shape[1] :].tolist()]


class _StreamDraw:
    """A ``generate`` logits processor that samples each row's next token by :func:`_draw` at the row's own
    uniform for this step (``u[row, step]``) and leaves only that token possible, so greedy search takes it."""

    def __init__(self, u: torch.Tensor, prompt_len: int, temperature: float, top_p: float) -> None:
        self.u, self.prompt_len, self.temperature, self.top_p = u, prompt_len, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:  # greedy, as the cached sampler
            nxt = scores.argmax(-1)
        else:
            probs = torch.softmax(scores.float() / self.temperature, dim=-1)
            if self.top_p < 1.0:
                probs = _filter_top_p(probs, self.top_p)
            nxt = _draw(probs, self.u[:, input_ids.shape[1] - self.prompt_len])
        return torch.full_like(scores, -math.inf).scatter_(1, nxt[:, None], 0.0)


def _filter_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose mass reaches ``top_p`` (renormalised)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # mass before a token below top_p: it is in the nucleus
    sorted_p = sorted_p * keep
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p / sorted_p.sum(-1, keepdim=True))


def _uniforms(seeds: Sequence[int], n: int, steps: int, device: torch.device) -> torch.Tensor:
    """``[len(seeds) * n, steps]`` uniforms in [0, 1): row ``i * n + j`` is sample j of prompt i, drawn from
    prompt i's own generator, so a sample's numbers do not depend on the other prompts of the batch."""
    rows = [
        torch.rand(n, steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
        for s in seeds
    ]
    return torch.cat(rows).to(device)


def _draw(probs: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """One token per row of ``probs``: by inverse-CDF sampling at the row's uniform ``u`` (the first token whose
    cumulative mass exceeds ``u`` times the total, so a token of zero mass is never drawn), or from torch's
    global generator when ``u`` is None. Both are exact draws from the categorical distribution."""
    if u is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class CachedSampler(HFRollout):
    """A lean sampling loop on the model's KV cache, measured faster than ``generate`` on small models
    (``benchmarks/bench_rollout.py``), where per-step overhead dominates:

    - each prompt is prefilled once and its cache repeated for the ``n`` samples of its group (``generate``
      with ``num_return_sequences`` prefills every copy);
    - finished sequences leave the batch (``Cache.batch_select_indices``) instead of decoding padding until the
      longest one ends;
    - no logits processors or stopping criteria besides temperature, top-p and EOS.

    Sampling is the same distribution as ``generate(do_sample=True, temperature, top_p, top_k=0)``;
    ``temperature=0`` is greedy and then matches ``generate(do_sample=False)`` token for token (tested).
    """

    def _sample(
        self, ids, attn, n, max_new_tokens, temperature, top_p, seeds
    ) -> list[tuple[list[int], bool]]:
        model = self.model
        device = ids.device
        eos = self.tokenizer.eos_token_id
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        # transformers 5 names the cache argument ``cache``; 4.x ``past_key_values``.
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
        attn = attn.repeat_interleave(n, dim=0)
        pos = pos[:, -1].repeat_interleave(n, dim=0)
        alive = torch.arange(logits.shape[0], device=device)  # original row of each batch row
        u = None if seeds is None else _uniforms(seeds, n, max_new_tokens, device)
        tokens: list[list[int]] = [[] for _ in range(logits.shape[0])]
        done = [False] * logits.shape[0]
        for step in range(max_new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    probs = _filter_top_p(probs, top_p)
                nxt = _draw(probs, None if u is None else u[alive, step])
            finished = nxt == eos
            for row, t, f in zip(alive.tolist(), nxt.tolist(), finished.tolist(), strict=True):
                tokens[row].append(t)
                done[row] = f
            if step + 1 == max_new_tokens:
                break
            keep = (~finished).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            if keep.numel() < alive.numel():  # finished sequences leave the batch and its cache
                cache.batch_select_indices(keep)
                alive, nxt, attn, pos = alive[keep], nxt[keep], attn[keep], pos[keep]
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
            pos = pos + 1
            out = model(
                input_ids=nxt[:, None],
                attention_mask=attn,
                position_ids=pos[:, None],
                use_cache=True,
                **{cache_kw: cache},
            )
            logits = out.logits[:, -1].float()
        return [(t, not d) for t, d in zip(tokens, done, strict=True)]


class VLLMRollout:
    """Sampling with vLLM on a GPU (optional dependency; not available on CPU-only machines).

    The engine holds its own copy of the weights, so ``sync_weights`` loads the policy's current state
    dict into it before each rollout round (vLLM's ``model.load_weights`` accepts Hugging Face names).
    Under ``torchrun`` each process samples its share of a step on its own GPU.
    """

    def __init__(self, model_dir: str, tokenizer: Any, *, gpu_memory_utilization: float = 0.4) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ValueError("rl.backend vllm needs the vllm package (pip install vllm; CUDA only)") from None
        self.tokenizer = tokenizer
        # Under torchrun every process runs its own engine on its own GPU (data parallel, as TRL's colocated
        # mode does): vLLM's external launcher joins the process group torchrun set up instead of spawning.
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        # In one process the engine must run in this process too, where sync_weights can reach its model.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = LLM(
            model=model_dir,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            **({"distributed_executor_backend": "external_launcher"} if launched else {}),
        )

    def sync_weights(self, model: Any) -> None:
        """Load ``model``'s parameters into the engine, one tensor at a time: an FSDP-sharded parameter is
        gathered whole (collective; every process syncs, in the same order) and freed after loading. The prefix
        cache is reset after, since it holds the prompts' keys and values under the old weights (as TRL does)."""
        from torch.distributed.tensor import DTensor

        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights(
            (name, p.full_tensor() if isinstance(p, DTensor) else p.detach())
            for name, p in model.named_parameters()
        )
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        def params(seed: int | None) -> Any:
            return SamplingParams(
                n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
            )

        # vLLM seeds each request's sampling on its own: one request per prompt group.
        per_prompt = params(None) if seeds is None else [params(int(s)) for s in seeds]
        eos = self.tokenizer.eos_token_id
        out = []
        for result in self.llm.generate(list(prompts), per_prompt, use_tqdm=False):
            group = []
            for o in result.outputs:
                ids = list(o.token_ids)
                truncated = o.finish_reason == "length"
                if not truncated and (not ids or ids[-1] != eos):
                    ids.append(eos)  # vLLM leaves the stop token out of token_ids for some versions
                group.append(Completion(list(result.prompt_token_ids), ids, o.text, truncated))
            out.append(group)
        return out


def make_backend(name: str, model: Any, tokenizer: Any, *, model_dir: str, gen_batch: int) -> RolloutBackend:
    """The rollout backend called ``name`` (``hf`` or ``vllm``)."""
    if name == "hf":
        return HFRollout(model, tokenizer, gen_batch=gen_batch)
    if name == "cached":
        return CachedSampler(model, tokenizer, gen_batch=gen_batch)
    if name == "vllm":
        return VLLMRollout(model_dir, tokenizer)
    raise ValueError(f"unknown rollout backend {name!r}; use cached, hf or vllm")
