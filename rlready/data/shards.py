"""Tokenise once into a memory-mapped token shard cached on disk.

A shard is one flat array of token ids, each document followed by EOS (``doc0 EOS doc1 EOS ...``), stored
as raw ``uint16`` when the vocabulary fits (< 65536 ids) else ``uint32``, next to a small JSON header.
Both files are named by a cache key: the SHA-256 of the data's identity (file paths/sizes/mtimes, or the
world config for generated data) and the tokenizer's content fingerprint. A second call with the same key
maps the existing shard without tokenising anything.

Writes are atomic: the token file and then the header are written to temporary names and renamed into
place, and a shard counts as valid only when its header exists and the token file has exactly the size the
header records. An interrupted run therefore leaves at worst an orphan temporary file, never a half shard
that looks valid; concurrent writers of the same key produce identical bytes and the last rename wins.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlready.data.tokenizer import tokenizer_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# 2: documents are encoded with the tokenizer's padding and truncation off. A padded call switches padding on
# in the Rust tokenizer and transformers saves it in tokenizer.json, so version-1 shards of such a tokenizer
# can hold pad tokens inside documents; the bump makes every version-1 shard a cache miss.
FORMAT_VERSION = 2
_BATCH_DOCS = 1024  # documents per encode_batch call: enough for the Rust side to parallelise


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id of a ``vocab_size`` vocabulary."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_key(identity: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 naming the shard of ``identity`` tokenised by ``tokenizer``."""
    try:
        ident = json.dumps(dict(identity), sort_keys=True)
    except TypeError as e:
        raise ValueError(f"data identity must be JSON-serialisable: {e}") from e
    payload = json.dumps(
        {"format": FORMAT_VERSION, "identity": ident, "tok": tokenizer_fingerprint(tokenizer)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_tokens(
    documents: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    cache_dir: str | Path,
    identity: Mapping[str, Any],
) -> np.memmap:
    """The read-only token array for ``documents``, from the cache when the key matches.

    ``documents`` is only iterated on a cache miss, so pass a lazy iterable (a generator) to skip the
    work of producing it too. ``identity`` must describe the documents completely: the cache trusts it.
    """
    cache = Path(cache_dir)
    key = cache_key(identity, tokenizer)
    shard = load_shard(cache, key)
    if shard is not None:
        return shard
    cache.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token: documents in a shard are separated by EOS")
    dtype = token_dtype(len(tokenizer))
    encoder = _plain_encoder(tokenizer)
    bin_path, meta_path = _paths(cache, key)
    tmp_bin = bin_path.with_name(f"{bin_path.name}.tmp{os.getpid()}")
    n_tokens = n_docs = 0
    try:
        with tmp_bin.open("wb") as fh:
            for batch in _batches(documents, _BATCH_DOCS):
                flat: list[int] = []
                for enc in encoder.encode_batch(batch, add_special_tokens=False):
                    flat.extend(enc.ids)
                    flat.append(eos)
                np.asarray(flat, dtype=dtype).tofile(fh)
                n_tokens += len(flat)
                n_docs += len(batch)
            fh.flush()
            os.fsync(fh.fileno())
        if n_docs == 0:
            raise ValueError("no documents to tokenise")
        os.replace(tmp_bin, bin_path)
    finally:
        tmp_bin.unlink(missing_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,
        "n_tokens": n_tokens,
        "n_documents": n_docs,
        "eos_token_id": eos,
        "identity": dict(identity),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    tmp_meta = meta_path.with_name(f"{meta_path.name}.tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    shard = load_shard(cache, key)
    if shard is None:  # only if another process corrupted the file between rename and map
        raise ValueError(f"token shard {bin_path} did not validate right after writing")
    return shard


def _plain_encoder(tokenizer: PreTrainedTokenizerBase) -> Any:
    """A copy of the tokenizer's Rust tokenizer with padding and truncation off (the original is untouched).

    ``encode_batch`` pads every document of a batch to the longest when padding is on, which a padded call
    or a tokenizer.json saved that way leaves switched on.
    """
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    encoder.no_padding()
    encoder.no_truncation()
    return encoder


def load_shard(cache_dir: str | Path, key: str) -> np.memmap | None:
    """The shard stored under ``key``, or ``None`` when it is absent or incomplete."""
    bin_path, meta_path = _paths(Path(cache_dir), key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        n_tokens = int(meta["n_tokens"])
        if meta.get("format") != FORMAT_VERSION or bin_path.stat().st_size != n_tokens * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(n_tokens,))


def shard_info(cache_dir: str | Path, key: str) -> dict[str, Any]:
    """The JSON header of a stored shard (token/document counts, identity, tokenizer fingerprint)."""
    _, meta_path = _paths(Path(cache_dir), key)
    if not meta_path.is_file():
        raise ValueError(f"no token shard with key {key} in {cache_dir}")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def _paths(cache: Path, key: str) -> tuple[Path, Path]:
    return cache / f"{key}.bin", cache / f"{key}.json"


def _batches(docs: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
