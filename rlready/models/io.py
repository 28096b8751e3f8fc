"""Building, loading and saving causal LMs as Hugging Face directories.

A saved directory (config.json, model.safetensors, generation_config.json, tokenizer files) loads as is with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``, so any stage's output can be the
next stage's ``--init DIR``. Weights are read only through safetensors (never pickle), and checked before
loading so a truncated or corrupted file gives a one-line ``ValueError`` naming it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

_log = logging.getLogger(__name__)

# The ``model_type``s the training stages can run from ``--init``. Each is a decoder-only causal LM whose logits
# are exactly ``hidden @ lm_head.weight.T`` (heads.final_hidden_and_head), with plain RoPE in a
# ``*RotaryEmbedding`` module that set_rope_theta can rebase, its decoder layers in ``get_decoder().layers``
# (per-layer FSDP) and, for MoE, a ``load_balancing_loss_func`` beside the model class and routed experts under
# ``experts`` (count_parameters). qwen3 / qwen3_moe are what the presets build; the others are the same
# decoder with minor differences and pass the same checks (tests/test_models_init.py). Any other architecture
# might load and then train wrongly (logit softcapping, scaled logits, a rope without inv_freq), so it is refused.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")

# Bytes per element of every safetensors dtype (safetensors format spec).
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
# The format caps the header at 100 MB; anything larger is corruption, not a header.
_MAX_HEADER_BYTES = 100_000_000
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_SAFETENSORS_INDEX = "model.safetensors.index.json"


def _transformers_dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; 4.51-4.55 only know the old name."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"model dtype must be a floating torch.dtype, got {dtype!r}")


def build_model(
    config: Any, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Any:
    """A freshly initialised causal LM for ``config`` (e.g. from ``build_config``).

    ``device="meta"`` builds the module tree without memory, for counting paper-scale models.
    """
    from transformers import AutoModelForCausalLM

    _check_dtype(dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **{_transformers_dtype_kwarg(): dtype})
    return model


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: truncated or corrupted safetensors file ({why})")


def check_safetensors(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a structurally complete safetensors file.

    Checks the 8-byte header length, that the header is a JSON table of tensors whose byte ranges match their
    dtype and shape, tile the data section without gaps or overlaps, and end exactly at the end of the file.
    safetensors would reject most of these too, but only when transformers gets to it and with a low-level
    message; this check names the file and runs before any model is built.
    """
    _read_safetensors(Path(path))


def _read_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """The ``{tensor name: shape}`` table of a safetensors file, after ``check_safetensors``' checks."""
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, f"{size} bytes, no header")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len == 0 or header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise _corrupt(path, f"header length {header_len} does not fit a {size}-byte file")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    spans = []
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
            nbytes = numel * _DTYPE_BYTES[info["dtype"]]
            shapes[name] = tuple(int(dim) for dim in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad header entry for tensor {name!r}") from None
        if end - begin != nbytes:
            raise _corrupt(path, f"tensor {name!r} has a byte range that does not match its shape")
        spans.append((begin, end))
    data_len = size - 8 - header_len
    cursor = 0
    for begin, end in sorted(spans):
        if begin != cursor:
            raise _corrupt(path, "tensor byte ranges overlap or leave gaps")
        cursor = end
    if cursor != data_len:
        raise _corrupt(path, f"header describes {cursor} data bytes, file holds {data_len}")
    return shapes


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory, refusing pickle-only checkpoints."""
    single = path / "model.safetensors"
    index = path / _SAFETENSORS_INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted({path / str(name) for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{index}: unreadable safetensors index") from None
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ValueError(f"{path}: safetensors shard(s) missing: {', '.join(missing)}")
        return shards
    if any((path / name).is_file() for name in _PICKLE_WEIGHTS):
        raise ValueError(
            f"{path}: only pickle weights (pytorch_model.bin) found; convert them to model.safetensors, "
            "pickle files are never loaded"
        )
    raise ValueError(f"{path}: no model.safetensors in model directory")


def _check_model_dir(path: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """Validate a model directory's files; return its checkpoint's ``{tensor: shape}`` and how to name it.

    The architecture is checked from config.json alone, before transformers or any weights are touched.
    """
    if not path.exists():
        raise ValueError(f"model directory does not exist: {path}")
    if not path.is_dir():
        raise ValueError(f"model path is not a directory: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"not a model directory (no config.json): {path}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file}: unreadable config.json ({e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{config_file}: unreadable config.json (not an object with a model_type)")
    if config["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path}: cannot load as a causal LM: unsupported architecture {config['model_type']!r} "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    files = _weight_files(path)
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for weights in files:
        for name, shape in _read_safetensors(weights).items():
            if name in where:
                raise ValueError(f"{path}: tensor {name} is in both {where[name]} and {weights.name}")
            shapes[name], where[name] = shape, weights.name
    label = files[0].name if len(files) == 1 else f"the checkpoint ({len(files)} safetensors shards)"
    return shapes, label


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def check_tokenizer_fits(tokenizer: Any, model: Any) -> None:
    """Raise ``ValueError`` if ``tokenizer`` can emit ids outside the model's input embedding.

    A smaller tokenizer is fine (embedding rows are often padded up to a multiple of 64 or 128).
    """
    rows = model.get_input_embeddings().weight.shape[0]
    n = len(tokenizer)  # base vocabulary plus added tokens
    if n > rows:
        raise ValueError(f"tokenizer has {n} tokens but the model's embedding has only {rows} rows")


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a model directory (``AutoTokenizer``, local files only)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir() or not _has_tokenizer(path):
        raise ValueError(f"no tokenizer files (tokenizer.json / tokenizer_config.json) in {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' load report, warnings, progress bars and prints off the terminal.

    Problems are found and reported by this module in one line; what transformers says on the way goes to
    this module's logger at debug level. The global settings are restored afterwards.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = getattr(hf_logging, "is_progress_bar_enabled", lambda: True)()
    out, err = io.StringIO(), io.StringIO()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        for w in caught:
            _log.debug("while loading: %s: %s", w.category.__name__, w.message)
        for text in (out.getvalue(), err.getvalue()):
            if text.strip():
                _log.debug("while loading: %s", text.strip())


def _natural_key(name: str) -> list[Any]:
    # Layer 10 after layer 9; re.split with a group alternates text and digits, so items compare by type.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _names(keys: Any, limit: int = 3) -> str:
    keys = sorted(keys, key=_natural_key)
    return ", ".join(keys[:limit]) + (", …" if len(keys) > limit else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _saved_forms(model: Any, state: dict[str, torch.Tensor]) -> dict[str, dict[str, tuple[int, ...]]]:
    """For state-dict keys that a checkpoint may store differently, the ``{checkpoint key: shape}`` stored.

    transformers 5 keeps some tensors fused in the model (e.g. MoE experts as ``[num_experts, ...]``) but saves
    and ships them in the original per-expert layout, converting on load; 4.x has no such conversions. Meta
    tensors go through the reverse conversion without memory, so this costs nothing for large models.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x: checkpoints hold the state dict as is
        return {}
    try:
        whole = revert_weight_conversion(model, dict(state))
    except Exception as e:  # noqa: BLE001 -- a conversion this version cannot reverse: native layout only
        _log.debug("no saved-layout check (%s: %s)", type(e).__name__, e)
        return {}
    forms: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in state.items():
        if key in whole and tuple(whole[key].shape) == tuple(tensor.shape):
            continue  # saved as is; only converted keys are reversed one by one
        try:
            one = revert_weight_conversion(model, {key: tensor})
        except Exception as e:  # noqa: BLE001
            _log.debug("no saved-layout check for %s (%s: %s)", key, type(e).__name__, e)
            continue
        forms[key] = {k: tuple(v.shape) for k, v in one.items()}
    return forms


def _check_checkpoint(path: Path, label: str, found: dict[str, tuple[int, ...]], model: Any) -> None:
    """Raise ``ValueError`` unless the checkpoint tensors ``found`` supply every tensor of ``model``.

    ``model`` is a meta-device model built from the directory's config. Each state-dict tensor is supplied
    when one of its accepted forms is present in full: for tied tensors (lm_head tied to the embedding) any
    one of the tied names, else its own name or the layout transformers saves it in (``_saved_forms``).
    Non-persistent buffers (rotary inv_freq) are rebuilt from the config and are neither required nor refused.
    """
    state = model.state_dict()
    owner: dict[str, int] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        if name in state:
            owner[name] = id(tensor)
    groups: dict[int, list[str]] = {}
    for name in state:
        groups.setdefault(owner.get(name, id(name)), []).append(name)
    saved = _saved_forms(model, {names[0]: state[names[0]] for names in groups.values() if len(names) == 1})
    expected_by_form = []  # per state-dict tensor: its accepted forms, each {checkpoint key: shape}
    for names in groups.values():
        if len(names) > 1:
            expected_by_form.append([{n: tuple(state[n].shape)} for n in names])
        else:
            forms = [{names[0]: tuple(state[names[0]].shape)}]
            if names[0] in saved:
                forms.append(saved[names[0]])
            expected_by_form.append(forms)

    missing: set[str] = set()
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    known: set[str] = set()
    for forms in expected_by_form:
        for form in forms:
            known.update(form)
        present = [form for form in forms if all(k in found for k in form)]
        if not present:
            # Name what is absent in the form the checkpoint comes closest to (saved layout on a tie).
            best = max(reversed(forms), key=lambda form: sum(k in found for k in form))
            missing.update(k for k in best if k not in found)
            continue
        for k, want in present[0].items():
            if found[k] != want:
                mismatched.append((k, found[k], want))
    if missing:
        raise ValueError(f"{path}: {label} lacks {_plural(len(missing), 'parameter')} ({_names(missing)})")
    if mismatched:
        mismatched.sort(key=lambda m: _natural_key(m[0]))
        name, got, want = mismatched[0]
        more = f" (and {len(mismatched) - 1} more with wrong shapes)" if len(mismatched) > 1 else ""
        raise ValueError(
            f"{path}: parameter {name} has shape {list(got)} in the checkpoint, the model expects {list(want)}{more}"
        )
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)} - set(state)
    ignored = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []
    extra = {
        k
        for k in found
        if k not in known and k not in buffers and not any(re.search(pattern, k) for pattern in ignored)
    }
    if extra:
        raise ValueError(
            f"{path}: {label} has {_plural(len(extra), 'tensor')} the model does not have ({_names(extra)})"
        )


def _check_loading_info(path: Path, model: Any, info: dict[str, Any]) -> None:
    """Second guard: what transformers itself reports it left uninitialised, ignored or could not fit."""
    state = model.state_dict()
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(
        dict(model.named_parameters())
    )
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)} - set(state)
    missing = set(info.get("missing_keys") or ()) - tied - buffers
    unexpected = set(info.get("unexpected_keys") or ()) - buffers
    mismatched = list(info.get("mismatched_keys") or ())
    errors = [str(e).strip().splitlines()[0] for e in info.get("error_msgs") or () if str(e).strip()]
    if missing:
        raise ValueError(
            f"{path}: transformers left {_plural(len(missing), 'parameter')} unloaded ({_names(missing)})"
        )
    if unexpected:
        raise ValueError(
            f"{path}: transformers found {_plural(len(unexpected), 'tensor')} the model does not have "
            f"({_names(unexpected)})"
        )
    if mismatched:
        raise ValueError(
            f"{path}: transformers found mismatched shapes ({_names(str(m[0]) for m in mismatched)})"
        )
    if errors:
        raise ValueError(f"{path}: cannot load as a causal LM ({errors[0]})")


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Any:
    """Load the causal LM in a local Hugging Face directory (``--init DIR``), validating it first.

    Raises a one-line ``ValueError`` naming the directory when it is missing, has no or an unreadable
    config.json, is not one of ``SUPPORTED_MODEL_TYPES``, holds only pickle weights, has truncated or
    corrupted safetensors files, whose tensors do not supply every parameter of the model its config describes
    with the right shape (or include tensors the model does not have), or ships a tokenizer larger than the
    model's embedding. Names and shapes are checked from the safetensors headers against a meta-device model,
    before any weights are read. Nothing transformers prints while loading reaches the terminal.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_dtype(dtype)
    path = Path(path)
    found, label = _check_model_dir(path)
    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            skeleton = build_model(config, dtype=dtype, device="meta")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _cannot_load(path, e) from e
        _check_checkpoint(path, label, found, skeleton)
        if _has_tokenizer(path):
            check_tokenizer_fits(load_tokenizer(path), skeleton)
    if torch.device(device).type == "meta":
        # The module tree only, no weights read: FSDP ranks that receive their shards from rank 0.
        return skeleton
    del skeleton
    with _quiet_transformers():
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                output_loading_info=True,
                **{_transformers_dtype_kwarg(): dtype},
            )
        except torch.cuda.OutOfMemoryError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise _cannot_load(path, e) from e
    _check_loading_info(path, model, info)
    return model.to(device)


def _cannot_load(path: Path, e: BaseException) -> ValueError:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ValueError(f"{path}: cannot load as a causal LM ({first_line})")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes renames durable on POSIX; some filesystems refuse it, which is harmless.
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _generation_config(model: Any, tokenizer: Any, max_new_tokens: int | None) -> Any:
    """The model's generation config with unset special-token ids filled in from the tokenizer, and a length.

    Without ``max_new_tokens`` a bare ``model.generate(**inputs)`` stops after transformers' default of 20
    tokens in all; an explicit value is what the stage generated with.
    """
    from transformers import GenerationConfig

    gen = model.generation_config
    gen = GenerationConfig() if gen is None else copy.deepcopy(gen)
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, field, None) is None:
            setattr(gen, field, getattr(tokenizer, field, None))
    if gen.pad_token_id is None:
        gen.pad_token_id = gen.eos_token_id
    if max_new_tokens is not None:
        gen.max_new_tokens = max_new_tokens
    return gen


def _model_max_length(model: Any, tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length`` when it is a real length, else the model's position limit.

    transformers' "unknown" is a huge sentinel (about 1e30), useless to anyone who truncates or budgets by it.
    """
    length = getattr(tokenizer, "model_max_length", None)
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(length, int) and length > 0 and (limit is None or length <= limit):
        return length
    return limit


def _write_portable_config(path: Path, config: Any) -> None:
    """Add the other transformers generation's RoPE keys to a saved config.json (portable_rope_fields)."""
    from rlready.models.rope import portable_rope_fields

    fields = portable_rope_fields(config)
    if not fields:
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved.update(fields)
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_model(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` in Hugging Face format, atomically.

    The directory loads with identical logits, token ids and generation under transformers 4.x and 5.x
    (tests/test_hf_compat.py): config.json carries the RoPE base in both generations' keys and the tokenizer
    files are written by :func:`rlready.data.tokenizer.write_tokenizer`. ``max_length`` is the sequence length
    the model was trained on (the tokenizer's ``model_max_length``; default: the tokenizer's own when it is a
    real length, else the model's ``max_position_embeddings``); ``max_new_tokens`` the response length that
    ``generation_config.json`` gives ``generate`` (default: the one already there, else ``max_length``).

    Everything is written to a temporary directory next to ``out_dir``, fsynced, then renamed into place, so
    ``out_dir`` is either absent, the previous complete save, or the new complete save -- never half-written.
    An existing ``out_dir`` is replaced only if it is itself a model directory (has config.json), so a wrong
    path cannot wipe unrelated files. Returns ``out_dir``.
    """
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(
            f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__} "
            "(wrap a tokenizers.Tokenizer in PreTrainedTokenizerFast(tokenizer_object=...))"
        )
    from rlready.data.tokenizer import write_tokenizer

    check_tokenizer_fits(tokenizer, model)
    for name, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    length = max_length if max_length is not None else _model_max_length(model, tokenizer)
    new_tokens = max_new_tokens or getattr(model.generation_config, "max_new_tokens", None) or length
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not (out_dir / "config.json").is_file():
        raise ValueError(f"refusing to replace {out_dir}: it exists and is not a model directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        _write_portable_config(tmp / "config.json", model.config)
        _generation_config(model, tokenizer, new_tokens).save_pretrained(tmp)
        write_tokenizer(tokenizer, tmp, model_max_length=length)
        _fsync_tree(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old / out_dir.name, out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out_dir
