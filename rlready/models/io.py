"""Building, loading and saving causal LMs as Hugging Face directories.

A saved directory (config.json, model.safetensors, generation_config.json, tokenizer files) loads as is with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``, so any stage's output can be the
next stage's ``--init DIR``. Weights are read only through safetensors (never pickle), and checked before
loading so a truncated or corrupted file gives a one-line ``ValueError`` naming it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

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
    path = Path(path)
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
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            numel = 1
            for dim in info["shape"]:
                numel *= int(dim)
            nbytes = numel * _DTYPE_BYTES[info["dtype"]]
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


def _check_model_dir(path: Path) -> None:
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
    for weights in _weight_files(path):
        check_safetensors(weights)


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


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Any:
    """Load the causal LM in a local Hugging Face directory (``--init DIR``), validating it first.

    Raises ``ValueError`` when the directory is missing, has no or an unreadable config.json, holds only
    pickle weights, has truncated or corrupted safetensors files, or ships a tokenizer larger than the
    model's embedding.
    """
    from transformers import AutoModelForCausalLM

    _check_dtype(dtype)
    path = Path(path)
    _check_model_dir(path)
    if torch.device(device).type == "meta":
        # The module tree only, no weights read: FSDP ranks that receive their shards from rank 0.
        from transformers import AutoConfig

        return build_model(
            AutoConfig.from_pretrained(path, local_files_only=True), dtype=dtype, device=device
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            **{_transformers_dtype_kwarg(): dtype},
        )
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot load as a causal LM ({first_line})") from e
    model.to(device)
    if _has_tokenizer(path):
        check_tokenizer_fits(load_tokenizer(path), model)
    return model


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


def _generation_config(model: Any, tokenizer: Any) -> Any:
    """The model's generation config with unset special-token ids filled in from the tokenizer."""
    from transformers import GenerationConfig

    gen = model.generation_config
    gen = GenerationConfig() if gen is None else copy.deepcopy(gen)
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, field, None) is None:
            setattr(gen, field, getattr(tokenizer, field, None))
    if gen.pad_token_id is None:
        gen.pad_token_id = gen.eos_token_id
    return gen


def save_model(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` in Hugging Face format, atomically.

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
    check_tokenizer_fits(tokenizer, model)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not (out_dir / "config.json").is_file():
        raise ValueError(f"refusing to replace {out_dir}: it exists and is not a model directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        _generation_config(model, tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
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
