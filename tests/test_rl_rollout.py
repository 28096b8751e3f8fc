"""The lean KV-cache sampler against ``model.generate`` and plain-PyTorch nucleus filtering."""

from __future__ import annotations

import pytest
import torch

from rlready.rl.rollout import CachedSampler, HFRollout, _filter_top_p, make_backend


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from rlready.data.tokenizer import train_tokenizer
    from rlready.data.world import World, WorldConfig
    from rlready.models import build_config, build_model

    tok = train_tokenizer(World(WorldConfig(n_entities=20)).documents("midtrain", n_chars=60_000), 512)
    torch.manual_seed(0)
    model = build_model(build_config("tiny", vocab_size=len(tok)))
    with torch.no_grad():  # make EOS a frequent greedy choice, so that some rows stop early and some do not
        emb = model.get_input_embeddings().weight
        emb[tok.eos_token_id] = emb[: len(tok)].mean(0) * 150 + emb[tok.eos_token_id]
    return model.eval(), tok


PROMPTS = [
    "Q: Tom has 3 apples. He buys 2 more. How many apples does Tom have now?\nA:",
    "Q: Who?\nA:",
    "The",
    "A b c d e f",
]


def _reference(model, tok, prompts, max_new):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    gen = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=max_new,
        pad_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    rows = []
    for row in gen[:, enc["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return rows


def test_greedy_matches_generate_token_for_token(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    want = _reference(model, tok, PROMPTS, 12)
    got = CachedSampler(model, tok, gen_batch=6).generate(PROMPTS, 3, 12, temperature=0.0)
    # generate through the drawing logits processor (per-prompt seeds) is greedy at temperature 0 too.
    seeded = HFRollout(model, tok).generate(PROMPTS, 2, 12, temperature=0.0, seeds=[1, 2, 3, 4])
    assert [[c.ids for c in g] for g in seeded] == [[w, w] for w in want]
    lengths = {len(w) for w in want}
    assert any(w[-1] == tok.eos_token_id for w in want) and any(
        len(w) == 12 and w[-1] != tok.eos_token_id for w in want
    )
    assert len(lengths) > 1  # rows finish at different steps: the batch shrinks mid-way
    for group, ref, prompt in zip(got, want, PROMPTS, strict=True):
        assert len(group) == 3
        for c in group:
            assert c.prompt_ids == tok(prompt)["input_ids"]  # left padding removed
            assert c.ids == ref
            assert c.truncated == (ref[-1] != tok.eos_token_id)
            assert c.text == tok.decode(ref, skip_special_tokens=True)


def test_sampling_shapes_and_reproducibility(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    s = CachedSampler(model, tok)
    torch.manual_seed(1)
    a = s.generate(PROMPTS, 4, 10, temperature=1.0, top_p=0.9)
    torch.manual_seed(1)
    b = s.generate(PROMPTS, 4, 10, temperature=1.0, top_p=0.9)
    assert [[c.ids for c in g] for g in a] == [[c.ids for c in g] for g in b]
    assert all(1 <= len(c.ids) <= 10 for g in a for c in g) and [len(g) for g in a] == [4] * len(PROMPTS)
    assert model.training is False


@pytest.mark.parametrize("seeds", [None, [5]], ids=["global-rng", "own-stream"])
def test_first_token_distribution_matches_the_model(model_and_tokenizer, seeds) -> None:
    """With many samples of one prompt, first-token frequencies follow softmax(logits / T), from torch's
    generator and from the group's own stream (inverse-CDF draws) alike."""
    model, tok = model_and_tokenizer
    enc = tok(["Q: Who?\nA:"], return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(model(**enc).logits[0, -1] / 1.5, -1)
    torch.manual_seed(0)
    sampler = CachedSampler(model, tok, gen_batch=2000)
    outs = sampler.generate(["Q: Who?\nA:"], 2000, 1, temperature=1.5, seeds=seeds)[0]
    freq = torch.bincount(torch.tensor([c.ids[0] for c in outs]), minlength=p.numel()).float() / 2000
    top = p.topk(5).indices
    assert torch.allclose(freq[top], p[top], atol=0.035)


def test_top_p_filter_against_a_direct_implementation() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 50) * 2, -1)
    for top_p in (0.1, 0.5, 0.9, 0.999):
        got = _filter_top_p(probs, top_p)
        for row, g in zip(probs, got, strict=True):
            order = row.argsort(descending=True)
            kept, mass = [], 0.0
            for i in order.tolist():
                kept.append(i)
                mass += float(row[i])
                if mass >= top_p:
                    break
            want = torch.zeros_like(row)
            want[kept] = row[kept] / row[kept].sum()
            assert torch.allclose(g, want, atol=1e-6)


def test_backend_names(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    assert isinstance(make_backend("cached", model, tok, model_dir="", gen_batch=8), CachedSampler)
    assert isinstance(make_backend("hf", model, tok, model_dir="", gen_batch=8), HFRollout)
    with pytest.raises(ValueError, match="unknown rollout backend"):
        make_backend("nope", model, tok, model_dir="", gen_batch=8)
    with pytest.raises(ValueError, match="gen_batch"):
        CachedSampler(model, tok, gen_batch=0)


@pytest.mark.parametrize("backend", [CachedSampler, HFRollout])
def test_a_seeded_group_samples_the_same_in_any_batch(model_and_tokenizer, backend) -> None:
    """With per-prompt seeds a group's samples depend on its seed only: alone, in a batch with other prompts
    in another order, or split over calls of another size, it draws the same tokens (the split of a step
    across processes relies on it), and torch's global RNG is left as it was."""
    model, tok = model_and_tokenizer
    seeds = {p: 1000 + i for i, p in enumerate(PROMPTS)}
    ids = lambda groups: [[c.ids for c in g] for g in groups]  # noqa: E731
    state = torch.get_rng_state()
    together = backend(model, tok, gen_batch=64).generate(
        PROMPTS, 4, 10, 1.0, seeds=[seeds[p] for p in PROMPTS]
    )
    assert torch.equal(torch.get_rng_state(), state)
    order = PROMPTS[::-1]
    reordered = backend(model, tok, gen_batch=8).generate(order, 4, 10, 1.0, seeds=[seeds[p] for p in order])
    assert ids(reordered)[::-1] == ids(together)
    alone = [backend(model, tok).generate([p], 4, 10, 1.0, seeds=[seeds[p]])[0] for p in PROMPTS]
    assert ids(alone) == ids(together)
    # Another seed draws other samples; the four samples of a group differ from one another.
    other = backend(model, tok).generate(PROMPTS[:1], 4, 10, 1.0, seeds=[7])
    assert ids(other)[0] != ids(together)[0] and len({tuple(c) for c in ids(together)[0]}) > 1
    with pytest.raises(ValueError, match="one per prompt"):
        backend(model, tok).generate(PROMPTS, 2, 4, 1.0, seeds=[1])


def test_stream_seeds_are_stable_and_distinct() -> None:
    from rlready.rl.rollout import stream_seed

    assert stream_seed("rl", 0, 3, 1) == stream_seed("rl", 0, 3, 1)
    names = [("rl", s, t, g) for s in range(3) for t in range(3) for g in range(3)] + [
        ("eval", 0, 0),
        ("eval", 0, 1),
    ]
    seeds = [stream_seed(*n) for n in names]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)


def test_inverse_cdf_draw_against_the_cumulative_mass() -> None:
    """Token i is drawn for u in [F(i-1), F(i)) of the normalised cumulative mass F; tokens of zero mass (cut by
    top-p) are never drawn, at u = 0 or as u nears 1."""
    from rlready.rl.rollout import _draw

    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]] * 7)
    u = torch.tensor([0.0, 0.1999, 0.2001, 0.6999, 0.7001, 0.99999, 1 - 2**-53], dtype=torch.float64)
    assert _draw(probs, u).tolist() == [1, 1, 3, 3, 4, 4, 4]
    unnormalised = probs * 3  # the draw scales u by the row's total mass
    assert _draw(unnormalised, u).tolist() == [1, 1, 3, 3, 4, 4, 4]


def test_seeded_backends_draw_the_same_samples(model_and_tokenizer) -> None:
    """Given the same seeds, the KV-cache sampler and ``generate`` (through its logits processor) draw the same
    tokens: the same uniforms at the same probabilities, up to the rounding of two forward implementations."""
    model, tok = model_and_tokenizer
    seeds = [11, 12, 13, 14]
    a = CachedSampler(model, tok).generate(PROMPTS, 4, 10, 1.0, top_p=0.95, seeds=seeds)
    b = HFRollout(model, tok).generate(PROMPTS, 4, 10, 1.0, top_p=0.95, seeds=seeds)
    assert [[(c.ids, c.truncated) for c in g] for g in a] == [[(c.ids, c.truncated) for c in g] for g in b]
