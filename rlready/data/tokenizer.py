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

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"
# Padding has its own token: a pad that is also EOS makes transformers' collators (which mask pad targets)
# drop every real EOS target, and hides where a response ended.
PAD_TOKEN = "<|pad|>"
N_BYTES = 256
# What a causal LM's tokenizer returns; transformers 4.x's PreTrainedTokenizerFast adds token_type_ids by
# default, which ``generate`` rejects.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


class TokenizerError(ValueError):
    """A tokenizer directory is missing, malformed or unusable."""


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, *, min_frequency: int = 2
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on ``texts``.

    Two special tokens: ``<|endoftext|>`` ends documents (EOS) and doubles as BOS, as in GPT-2/Qwen;
    ``<|pad|>`` (id 1) only pads batches and is never trained on as a target. ``vocab_size`` counts both.
    Digits are split one per token (as Llama and Qwen do) so that arithmetic in the reasoning data is
    learnable digit by digit, and a space before a digit stays on it (``" 7"``, as GPT-2's pre-tokenizer keeps
    a word's space): a separate space token would put the same token before every number, so copying a
    number from a question would need attention two tokens back (docs/method.md §5.1).
    """
    if vocab_size < N_BYTES + 2:
        raise TokenizerError(f"vocab_size must be >= {N_BYTES + 2} (256 bytes + EOS + PAD), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() <= N_BYTES + 2:
        raise TokenizerError("tokenizer training found no merges: the training text is empty or too short")
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_input_names=MODEL_INPUT_NAMES,
    )


def save_tokenizer(
    tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, *, model_max_length: int | None = None
) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with eos/bos/pad set) to ``out_dir``.

    ``model_max_length``: the sequence length the tokenizer's model is trained on (see ``write_tokenizer``).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TokenizerError(f"tokenizer output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tokenizer, out, model_max_length=model_max_length)
    return out


def write_tokenizer(
    tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, *, model_max_length: int | None = None
) -> None:
    """``tokenizer.save_pretrained(out_dir)``, the files made to load alike under transformers 4.x and 5.x.

    - transformers 5 records its internal class name ``TokenizersBackend``, which 4.x cannot resolve, and 4.x
      records ``PreTrainedTokenizer`` (its name with "Fast" cut off, a slow class that has no files here):
      the public ``PreTrainedTokenizerFast`` names the same tokenizer under both (pyproject allows 4.x);
    - ``model_input_names`` is written out without ``token_type_ids``, which 4.x's fast-tokenizer default
      adds and ``generate`` rejects (no decoder-only LM takes them);
    - ``padding_side`` is left: every directory rlready writes is a decoder-only LM, whose batched
      generation needs the prompts flush against the new tokens;
    - tokenizer.json is saved without padding or truncation: a padded call (``tok(..., padding=True)``)
      switches them on in the Rust tokenizer, and saved there they would pad every ``encode_batch`` of a
      ``tokenizers`` client; padding belongs to the call and the tokenizer config;
    - ``model_max_length`` (when given) replaces transformers' "unknown" of about 1e30.
    """
    out = Path(out_dir)
    tokenizer.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizer") and tokenizer.is_fast:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    config["padding_side"] = "left"
    if model_max_length is not None:
        if (
            isinstance(model_max_length, bool)
            or not isinstance(model_max_length, int)
            or model_max_length < 1
        ):
            raise TokenizerError(f"model_max_length must be a positive int, got {model_max_length!r}")
        config["model_max_length"] = model_max_length
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    spec_path = out / "tokenizer.json"
    if spec_path.is_file():
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        if spec.get("padding") is not None or spec.get("truncation") is not None:
            spec["padding"] = spec["truncation"] = None
            spec_path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
