"""Byte-level BPE tokenizer: train one on a text iterator, save it as a Hugging Face directory, load one.

Training uses the ``tokenizers`` library (Rust, fast); the result is wrapped in ``transformers``'
``PreTrainedTokenizerFast`` and written with ``save_pretrained`` so that ``AutoTokenizer.from_pretrained(dir)``
loads it as is. ``transformers`` is imported lazily because importing it costs seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"
N_BYTES = 256


class TokenizerError(ValueError):
    """A tokenizer directory is missing, malformed or unusable."""


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, *, min_frequency: int = 2
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``<|endoftext|>`` is the only special token: it ends documents (EOS) and doubles as BOS and PAD,
    as in GPT-2/Qwen, since packed pre-training never needs a distinct pad. Digits are split one per
    token (as Llama and Qwen do) so that arithmetic in the reasoning data is learnable digit by digit.
    """
    if vocab_size < N_BYTES + 1:
        raise TokenizerError(f"vocab_size must be >= {N_BYTES + 1} (256 bytes + EOS), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() <= N_BYTES + 1:
        raise TokenizerError("tokenizer training found no merges: the training text is empty or too short")
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with eos/bos/pad set) to ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TokenizerError(f"tokenizer output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    # transformers 5 records its internal class name "TokenizersBackend", which transformers 4.x cannot
    # resolve; the public alias loads under both, and pyproject allows transformers >= 4.51.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory (ours or any fast Hugging Face tokenizer) with ``AutoTokenizer``.

    Checks up front what ``AutoTokenizer`` would otherwise report as a hub lookup failure, and requires
    an EOS token because document packing separates documents with it.
    """
    d = Path(path)
    if not d.exists():
        raise TokenizerError(f"tokenizer directory does not exist: {d}")
    if not d.is_dir():
        raise TokenizerError(f"tokenizer path is not a directory: {d}")
    spec = d / "tokenizer.json"
    if not spec.is_file():
        raise TokenizerError(f"not a tokenizer directory (no tokenizer.json): {d}")
    try:
        json.loads(spec.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"unreadable tokenizer.json in {d}: {e}") from e
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # transformers raises many types for a bad directory; report them as one
        raise TokenizerError(f"cannot load tokenizer from {d}: {type(e).__name__}: {e}") from e
    if tok.eos_token_id is None:
        raise TokenizerError(f"tokenizer in {d} has no eos_token (needed to separate documents)")
    return tok


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the tokenizer's full serialized content (vocab, merges, normalizers, special tokens).

    Part of the token cache key: a different tokenizer must never reuse another's token ids.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"need a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    h = hashlib.sha256(backend.to_str().encode("utf-8"))
    h.update(f"|eos={tokenizer.eos_token}".encode())
    return h.hexdigest()
