"""Tests for ``load_model`` as ``--init DIR``: only complete checkpoints of supported architectures load, and
refusals are one line with nothing from transformers on the terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_models import make_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

from rlready.models import (
    build_config,
    build_model,
    final_hidden_and_head,
    get_rope_theta,
    load_model,
    save_model,
    set_rope_theta,
)

VOCAB = 128

# Every model_type load_model accepts, each checked below to run the training paths; kept equal to
# rlready.models.io.SUPPORTED_MODEL_TYPES so that widening the list needs a test here.
ARCHITECTURES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(100)


def tiny(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(build_config(name, vocab_size=VOCAB, num_hidden_layers=2, **overrides)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """``{preset: (model, saved dir)}`` for a tiny dense and a tiny MoE model; tests edit copies of the dirs."""
    root = tmp_path_factory.mktemp("init")
    out = {}
    for name in ("tiny", "tiny-moe"):
        model = tiny(name)
        out[name] = (model, save_model(model, tokenizer, root / name))
    return out


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_weights(src: Path, dst: Path, edit) -> Path:
    """A copy of model dir ``src`` whose model.safetensors holds ``edit(tensors)``."""
    d = copy_dir(src, dst)
    tensors = load_file(d / "model.safetensors")
    save_file(edit(tensors), str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def refusal(path: Path, capfd) -> str:
    """The message of the ValueError ``load_model(path)`` raises; checks it is one line and nothing printed."""
    capfd.readouterr()
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert capfd.readouterr() == ("", "")
    return message


def assert_same_state(got: torch.nn.Module, want: torch.nn.Module) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for key, tensor in want_state.items():
        assert torch.equal(got_state[key], tensor), key


def test_supported_list_is_the_tested_one():
    from rlready.models.io import SUPPORTED_MODEL_TYPES

    assert sorted(SUPPORTED_MODEL_TYPES) == sorted(ARCHITECTURES)


def test_gpt2_directory_is_refused_naming_the_architecture(tmp_path, capfd):
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    message = refusal(tmp_path / "gpt2", capfd)
    assert "unsupported architecture 'gpt2' (supported: llama, mistral, mixtral" in message
    assert "qwen3, qwen3_moe)" in message


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_saved_model_loads_identically_and_silently(saved, capfd, name):
    model, path = saved[name]
    capfd.readouterr()
    loaded = load_model(path)
    skeleton = load_model(path, device="meta")
    assert capfd.readouterr() == ("", "")
    assert_same_state(loaded, model)
    assert (
        loaded.lm_head.weight is loaded.model.embed_tokens.weight
    )  # tied: absent from the file, not missing
    assert {n: p.shape for n, p in skeleton.named_parameters()} == {
        n: p.shape for n, p in loaded.named_parameters()
    }


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_missing_layer_is_refused_with_count_and_name(saved, tmp_path, capfd, name):
    path = saved[name][1]

    def drop_layer_1(tensors):
        return {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}

    n_dropped = sum(k.startswith("model.layers.1.") for k in load_file(path / "model.safetensors"))
    d = edit_weights(path, tmp_path / "hole", drop_layer_1)
    message = refusal(d, capfd)
    assert f"model.safetensors lacks {n_dropped} parameters (model.layers.1." in message
    assert "model.layers.1.input_layernorm.weight" in message  # names sorted, first ones shown
    # The same hole on a meta load (FSDP ranks other than 0) is refused too.
    with pytest.raises(ValueError, match="lacks"):
        load_model(d, device="meta")


@pytest.mark.parametrize(
    "name, key",
    [
        ("tiny", "model.layers.0.self_attn.q_proj.weight"),
        ("tiny-moe", "model.layers.1.mlp.experts.3.up_proj.weight"),
    ],
)
def test_wrong_shape_is_refused_naming_the_parameter(saved, tmp_path, capfd, name, key):
    path = saved[name][1]

    def shrink(tensors):
        want = tensors[key].shape
        tensors[key] = torch.zeros(want[0] - 1, want[1])
        return tensors

    d = edit_weights(path, tmp_path / "shape", shrink)
    want = list(load_file(path / "model.safetensors")[key].shape)
    message = refusal(d, capfd)
    assert message.endswith(
        f"parameter {key} has shape {[want[0] - 1, want[1]]} in the checkpoint, the model expects {want}"
    )


def test_extra_tensor_is_refused(saved, tmp_path, capfd):
    def add(tensors):
        tensors["model.layers.0.mlp.adapter.weight"] = torch.zeros(4, 4)
        return tensors

    d = edit_weights(saved["tiny"][1], tmp_path / "extra", add)
    message = refusal(d, capfd)
    assert (
        "model.safetensors has 1 tensor the model does not have (model.layers.0.mlp.adapter.weight)"
        in message
    )


def test_untied_head_is_required(tokenizer, tmp_path, capfd):
    model = tiny("tiny", tie_word_embeddings=False)
    path = save_model(model, tokenizer, tmp_path / "untied")
    capfd.readouterr()
    assert_same_state(load_model(path), model)
    d = edit_weights(
        path, tmp_path / "headless", lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"}
    )
    assert refusal(d, capfd).endswith("model.safetensors lacks 1 parameter (lm_head.weight)")


def test_saved_rotary_inv_freq_is_tolerated(saved, tmp_path, capfd):
    """Older checkpoints store the rotary table, which the model rebuilds from its config."""
    model, path = saved["tiny"]

    def add_inv_freq(tensors):
        tensors["model.rotary_emb.inv_freq"] = model.model.rotary_emb.inv_freq.clone()
        return tensors

    d = edit_weights(path, tmp_path / "inv_freq", add_inv_freq)
    capfd.readouterr()
    assert_same_state(load_model(d), model)
    assert capfd.readouterr() == ("", "")


def test_moe_checkpoint_in_the_models_own_layout_loads(saved, tmp_path, capfd):
    """A state dict saved as is (fused experts under transformers 5) loads like the per-expert layout."""
    model, path = saved["tiny-moe"]
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    d = edit_weights(path, tmp_path / "native", lambda _: state)
    capfd.readouterr()
    assert_same_state(load_model(d), model)
    assert capfd.readouterr() == ("", "")


def tiny_config(model_type: str):
    kwargs = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    moe = dict(num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.01)
    if model_type == "mixtral":
        kwargs.update(moe, num_local_experts=4)
    elif model_type == "qwen2_moe":
        kwargs.update(moe, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=16)
    elif model_type == "qwen3_moe":
        kwargs.update(moe, num_experts=4, moe_intermediate_size=16)
    return AutoConfig.for_model(model_type, **kwargs)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_supported_architecture_runs_the_training_paths(tmp_path, capfd, model_type):
    """Load from a saved dir, fused head == logits (and the model's own aux loss), RoPE rebase."""
    config = tiny_config(model_type)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    path = save_model(model, make_tokenizer(30), tmp_path / model_type)
    capfd.readouterr()
    loaded = load_model(path).eval()
    assert capfd.readouterr() == ("", "")
    assert_same_state(loaded, model)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = loaded(ids, labels=ids)
        h = final_hidden_and_head(loaded, ids)
        logits = h.hidden @ h.weight.T + (0 if h.bias is None else h.bias)
        torch.testing.assert_close(logits, out.logits)
        if "moe" in model_type or model_type == "mixtral":
            torch.testing.assert_close(h.aux_loss, config.router_aux_loss_coef * out.aux_loss)
        else:
            assert h.aux_loss is None
        set_rope_theta(loaded, 3e5)
        assert get_rope_theta(loaded.config) == 3e5
        assert not torch.allclose(loaded(ids).logits[:, 1:], out.logits[:, 1:])


def test_sharded_checkpoint_is_checked_across_shards(saved, tmp_path, capfd):
    model = saved["tiny"][0]
    d = tmp_path / "sharded"
    model.save_pretrained(d, max_shard_size="100KB")
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) > 1 and (d / "model.safetensors.index.json").is_file()
    capfd.readouterr()
    assert_same_state(load_model(d), model)
    assert capfd.readouterr() == ("", "")
    tensors = load_file(shards[-1])
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(shards[-1]), metadata={"format": "pt"})
    message = refusal(d, capfd)
    assert message.endswith(
        f"the checkpoint ({len(shards)} safetensors shards) lacks 1 parameter ({dropped})"
    )
