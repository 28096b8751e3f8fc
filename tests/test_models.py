"""Tests for rlready.models: presets and parameter counts, HF-directory I/O, RoPE rebase, fused-loss hook."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from rlready.models import (
    PRESETS,
    build_config,
    build_model,
    check_safetensors,
    count_parameters,
    final_hidden_and_head,
    get_rope_theta,
    load_model,
    save_model,
    set_rope_theta,
)

VOCAB = 128


def make_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ``n_words + 2`` tokens (words, <eos>, <unk>), built locally."""
    vocab = {f"w{i}": i for i in range(n_words)}
    vocab["<eos>"] = n_words
    vocab["<unk>"] = n_words + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>"
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer(100)


def tiny(name: str = "tiny", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(build_config(name, vocab_size=VOCAB, **overrides)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny model directory; tests corrupt copies of it."""
    return save_model(tiny(), tokenizer, tmp_path_factory.mktemp("saved") / "model")


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ----------------------------------------------------------------------------------------------- presets


def closed_form_counts(c) -> tuple[int, int]:
    """Parameter counts of a Qwen3 / Qwen3-MoE config, written out from the architecture by hand."""
    h, hd, layers = c.hidden_size, c.head_dim, c.num_hidden_layers
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    attn = h * q + 2 * h * kv + q * h + 2 * hd  # q, k, v, o projections (no bias) + q_norm, k_norm
    norms = 2 * h  # input and post-attention RMSNorm
    embed = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    shared = embed + h + layers * (attn + norms)  # + final norm
    if c.model_type == "qwen3_moe":
        expert = 3 * h * c.moe_intermediate_size
        router = c.num_experts * h
        total = shared + layers * (router + c.num_experts * expert)
        return total, shared + layers * (router + c.num_experts_per_tok * expert)
    total = shared + layers * 3 * h * c.intermediate_size
    return total, total


def named_size(name: str) -> tuple[float, float]:
    """(total, active) encoded in a preset name: dense-4b -> (4e9, 4e9), moe-5b-a0.3b -> (5e9, 0.3e9)."""
    m = re.fullmatch(r"(dense|moe)-([\d.]+)b(?:-a([\d.]+)b)?", name)
    assert m, name
    total = float(m.group(2)) * 1e9
    return total, float(m.group(3)) * 1e9 if m.group(3) else total


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta_with_expected_counts(name):
    config = build_config(name)
    model = build_model(config, device="meta")
    assert all(p.is_meta for p in model.parameters())
    total, active = count_parameters(model)
    assert (total, active) == closed_form_counts(config)
    if name in ("tiny", "tiny-moe"):
        assert 1e6 <= total <= 3e6 and config.vocab_size == 2048
    elif name == "small":
        assert 1.5e6 <= total <= 3e6 and config.vocab_size == 2048
    else:
        want_total, want_active = named_size(name)
        assert config.vocab_size == 151936
        assert abs(total / want_total - 1) < 0.15 and abs(active / want_active - 1) < 0.15
    assert get_rope_theta(config) == 1e4
    if PRESETS[name].family == "dense":
        assert total == active
    else:
        assert active < total


def test_dense_4b_is_qwen3_4b_shape():
    c = build_config("dense-4b")
    shape = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
    assert shape == (2560, 36, 32, 8, 128)
    assert (c.intermediate_size, c.tie_word_embeddings) == (9728, True)


def test_build_config_arguments_and_overrides():
    c = build_config("tiny", vocab_size=300, rope_theta=5e5, max_position_embeddings=512, num_hidden_layers=2)
    assert (c.vocab_size, c.max_position_embeddings, c.num_hidden_layers) == (300, 512, 2)
    assert get_rope_theta(c) == 5e5
    model = build_model(c)
    assert model.get_input_embeddings().weight.shape == (300, 128)
    assert len(model.model.layers) == 2


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'huge'") as err:
        build_config("huge")
    assert all(name in str(err.value) for name in PRESETS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": True}, "vocab_size"),
        ({"max_position_embeddings": -4}, "max_position_embeddings"),
        ({"rope_theta": 0.0}, "rope theta"),
        ({"rope_theta": math.nan}, "rope theta"),
        ({"rope_theta": math.inf}, "rope theta"),
        ({"rope_theta": "1e4"}, "rope theta"),
        ({"num_hiden_layers": 2}, "unknown config field.*num_hiden_layers"),
        ({"rope_parameters": {"rope_theta": 1.0}}, "rope_theta=..."),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ],
)
def test_build_config_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_config("tiny", **kwargs)


def test_count_parameters_counts_tied_embedding_once():
    tied = tiny()
    untied = tiny(tie_word_embeddings=False)
    embed = VOCAB * 128
    assert count_parameters(untied)[0] - count_parameters(tied)[0] == embed
    assert count_parameters(tied)[0] == sum(p.numel() for p in tied.state_dict().values()) - embed


# -------------------------------------------------------------------------------------------------- io


def test_build_model_dtype_and_bad_dtype():
    model = build_model(build_config("tiny", vocab_size=VOCAB), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="floating torch.dtype"):
        build_model(build_config("tiny", vocab_size=VOCAB), dtype=torch.int64)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_save_round_trip_through_auto_classes_gives_identical_logits(tmp_path, tokenizer, name):
    model = tiny(name)
    out = save_model(model, tokenizer, tmp_path / "out")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        f.name for f in out.iterdir()
    }
    assert [f.name for f in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_model(out).eval()
    with torch.no_grad():
        want = model(ids).logits
        assert torch.equal(reloaded(ids).logits, want)
        assert torch.equal(ours(ids).logits, want)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("w1 w7 w99")["input_ids"] == tokenizer("w1 w7 w99")["input_ids"] == [1, 7, 99]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == tokenizer.eos_token_id == 100


def test_load_model_on_meta_builds_the_saved_shape_without_weights(saved):
    """The skeleton FSDP ranks other than 0 build from ``--init`` (their shards come from rank 0)."""
    real = load_model(saved)
    skeleton = load_model(saved, device="meta")
    assert all(p.is_meta for p in skeleton.parameters())
    assert {n: p.shape for n, p in skeleton.named_parameters()} == {
        n: p.shape for n, p in real.named_parameters()
    }
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight  # the tie, as in the saved model
    with pytest.raises(ValueError, match="no config.json"):
        load_model(saved.parent, device="meta")  # still validated


def test_save_replaces_previous_model_dir(tmp_path, tokenizer):
    out = save_model(tiny(seed=0), tokenizer, tmp_path / "m")
    second = tiny(seed=1)
    save_model(second, tokenizer, out)
    assert torch.equal(load_model(out).model.embed_tokens.weight, second.model.embed_tokens.weight)
    assert [f.name for f in tmp_path.iterdir()] == ["m"]


def test_failed_save_keeps_previous_dir_and_leaves_no_temp(tmp_path, tokenizer, monkeypatch):
    first = tiny(seed=0)
    out = save_model(first, tokenizer, tmp_path / "m")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(tiny(seed=1), tokenizer, out)
    assert [f.name for f in tmp_path.iterdir()] == ["m"]
    assert torch.equal(load_model(out).model.embed_tokens.weight, first.model.embed_tokens.weight)


def test_save_refuses_to_replace_a_non_model_dir(tmp_path, tokenizer):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a model directory"):
        save_model(tiny(), tokenizer, tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"


def test_save_rejects_raw_or_oversized_tokenizer(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="transformers tokenizer"):
        save_model(tiny(), tokenizer.backend_tokenizer, tmp_path / "m")
    with pytest.raises(
        ValueError, match="tokenizer has 202 tokens but the model's embedding has only 128 rows"
    ):
        save_model(tiny(), make_tokenizer(200), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_load_rejects_tokenizer_larger_than_embedding(tmp_path, saved):
    out = saved
    bad = copy_dir(out, tmp_path / "bad")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bad / f).unlink()
    make_tokenizer(200).save_pretrained(bad)
    with pytest.raises(ValueError, match="tokenizer has 202 tokens"):
        load_model(bad)


def test_load_directory_errors(tmp_path, saved):
    out = saved
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_model(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_model(tmp_path / "empty")
    for name, text in [("garbled", "{not json"), ("list", "[1, 2]")]:
        d = copy_dir(out, tmp_path / name)
        (d / "config.json").write_text(text)
        with pytest.raises(ValueError, match="unreadable config.json"):
            load_model(d)


def test_load_refuses_pickle_only_and_weightless_dirs(tmp_path, saved):
    out = saved
    d = copy_dir(out, tmp_path / "pickle")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_model(d)
    torch.save({"w": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\)"):
        load_model(d)


def test_load_rejects_sharded_index_with_missing_shard(tmp_path, saved):
    out = saved
    d = copy_dir(out, tmp_path / "sharded")
    (d / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shard.*missing: model-00001-of-00002.safetensors"):
        load_model(d)


def header_of(path: Path) -> tuple[int, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, raw


@pytest.mark.parametrize("cut", [1, 1000, "into_header", "all_but_4"])
def test_truncated_safetensors_is_rejected(tmp_path, saved, cut):
    out = saved
    d = copy_dir(out, tmp_path / "t")
    n, raw = header_of(d / "model.safetensors")
    keep = {"into_header": 8 + n // 2, "all_but_4": 4}.get(cut, len(raw) - cut if isinstance(cut, int) else 0)
    (d / "model.safetensors").write_bytes(raw[:keep])
    with pytest.raises(ValueError, match="truncated or corrupted safetensors file"):
        load_model(d)


def flip_length(raw: bytes, n: int) -> bytes:
    return struct.pack("<Q", n + 4096) + raw[8:]


def flip_json_brace(raw: bytes, n: int) -> bytes:
    return raw[:8] + b"X" + raw[9:]


def flip_offset_digit(raw: bytes, n: int) -> bytes:
    header = raw[8 : 8 + n]
    i = header.index(b'"data_offsets":[') + len(b'"data_offsets":[')
    while not chr(header[i]).isdigit() or header[i] == ord("0"):
        i += 1
    digit = b"1" if header[i] != ord("1") else b"2"
    return raw[: 8 + i] + digit + raw[9 + i :]


def flip_dtype(raw: bytes, n: int) -> bytes:
    return raw.replace(b'"dtype":"F32"', b'"dtype":"F64"', 1)


def grow_shape(raw: bytes, n: int) -> bytes:
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"][0] += 1
    new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(new) == n
    return raw[:8] + new + raw[8 + n :]


@pytest.mark.parametrize("corrupt", [flip_length, flip_json_brace, flip_offset_digit, flip_dtype, grow_shape])
def test_corrupted_safetensors_header_is_rejected(tmp_path, saved, corrupt):
    out = saved
    d = copy_dir(out, tmp_path / "c")
    n, raw = header_of(d / "model.safetensors")
    bad = corrupt(raw, n)
    assert bad != raw
    (d / "model.safetensors").write_bytes(bad)
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or corrupted safetensors file"):
        load_model(d)


def test_check_safetensors_accepts_valid_files(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(
        {
            "a": torch.zeros(3, 5, dtype=torch.bfloat16),
            "b": torch.ones(7, dtype=torch.int64),
            "c": torch.zeros(0),
        },
        str(path),
        metadata={"format": "pt"},
    )
    check_safetensors(path)


def test_load_unknown_architecture_is_a_value_error(tmp_path, saved):
    out = saved
    d = copy_dir(out, tmp_path / "odd")
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "no_such_model"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot load as a causal LM"):
        load_model(d)


# ------------------------------------------------------------------------------------------------ rope


def expected_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_set_rope_theta_changes_model_and_saved_config(tmp_path, tokenizer, name):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), expected_inv_freq(1e4, 32))
    set_rope_theta(model, 1e6)
    assert get_rope_theta(model.config) == 1e6
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), expected_inv_freq(1e6, 32))
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after[:, 0], before[:, 0])  # position 0 is not rotated
    assert not torch.allclose(after[:, 1:], before[:, 1:])
    out = save_model(model, tokenizer, tmp_path / "mid")
    saved = json.loads((out / "config.json").read_text())
    assert (saved.get("rope_parameters") or {}).get("rope_theta", saved.get("rope_theta")) == 1e6
    reloaded = load_model(out).eval()
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq.double(), expected_inv_freq(1e6, 32))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, after)


@pytest.mark.parametrize("theta", [0, -1.0, 1.0, math.nan, math.inf, "1e6", True])
def test_set_rope_theta_rejects_bad_values(theta):
    model = tiny()
    with pytest.raises(ValueError, match="rope theta"):
        set_rope_theta(model, theta)
    assert get_rope_theta(model.config) == 1e4


def test_set_rope_theta_rejects_models_without_rope():
    with pytest.raises(ValueError, match="config"):
        set_rope_theta(torch.nn.Linear(2, 2), 1e6)


# ----------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_hidden_times_head_equals_logits_and_gradients(name):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    hidden, weight, bias, _ = final_hidden_and_head(model, ids, mask)
    assert hidden.shape == (3, 10, 128) and weight.shape == (VOCAB, 128) and bias is None
    assert weight is model.lm_head.weight
    ours = hidden @ weight.T
    ref = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # Same graph: a loss through hidden @ W.T gives the same parameter gradients as one through the logits.
    target = torch.randn_like(ref)
    grads_ours = torch.autograd.grad((ours * target).sum(), list(model.parameters()), allow_unused=True)
    grads_ref = torch.autograd.grad((ref * target).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(grads_ours, grads_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def switch_load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int):
    """Switch Transformer eqs. 4-6 over all layers' tokens, written out in plain PyTorch (no padding)."""
    logits = torch.cat(router_logits, dim=0)
    probs = logits.softmax(dim=-1)
    chosen = torch.zeros_like(probs).scatter(1, probs.topk(top_k, dim=-1).indices, 1.0)
    fraction_routed = chosen.mean(dim=0) / top_k  # share of the top-k slots each expert receives
    return num_experts * top_k * (fraction_routed * probs.mean(dim=0)).sum()


def test_moe_aux_loss_matches_model_and_hand_reference():
    model = tiny("tiny-moe")
    c = model.config
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    out = final_hidden_and_head(model, ids)
    full = model(ids, output_router_logits=True)
    torch.testing.assert_close(out.aux_loss, c.router_aux_loss_coef * full.aux_loss)
    ref = switch_load_balancing_loss(full.router_logits, c.num_experts, c.num_experts_per_tok)
    torch.testing.assert_close(out.aux_loss, c.router_aux_loss_coef * ref)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    masked = final_hidden_and_head(model, ids, mask)
    torch.testing.assert_close(
        masked.aux_loss,
        c.router_aux_loss_coef * model(ids, attention_mask=mask, output_router_logits=True).aux_loss,
    )
    out.aux_loss.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def test_aux_loss_is_none_for_dense_and_when_disabled():
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert final_hidden_and_head(tiny(), ids).aux_loss is None
    assert final_hidden_and_head(tiny("tiny-moe", output_router_logits=False), ids).aux_loss is None


def test_heads_reject_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, time\]"):
        final_hidden_and_head(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        final_hidden_and_head(model, torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        final_hidden_and_head(model, torch.zeros(2, 5, dtype=torch.long))


def test_import_does_not_load_transformers():
    code = "import sys, rlready.models; assert 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
