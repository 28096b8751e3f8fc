"""Tokenizer training/saving/loading, real-data sources and the on-disk token cache."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rlready.data import sources
from rlready.data.shards import cache_key, cached_tokens, load_shard, shard_info, token_dtype
from rlready.data.sources import DataSourceError, open_source, read_documents
from rlready.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from rlready.data.world import World, WorldConfig, generate_documents, world_identity

WORLD = WorldConfig(seed=7, n_entities=40, n_cities=10)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The default vocab size; this small world's text saturates below it (~1400 tokens). 600k characters hold
    # ~30k of problems (maths is 0.05 of pre-training), enough for the merges that keep a problem short.
    tok = train_tokenizer(generate_documents(WORLD, "pretrain", n_chars=600_000))
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    return load_tokenizer(tok_dir)


# -- tokenizer ------------------------------------------------------------------------------------------


def test_saved_tokenizer_loads_with_auto_tokenizer(tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    assert {p.name for p in tok_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == config["bos_token"] == EOS_TOKEN and config["pad_token"] == PAD_TOKEN
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(hf) == len(vocab) <= 2048
    assert hf.eos_token == EOS_TOKEN and hf.eos_token_id == hf.convert_tokens_to_ids(EOS_TOKEN) == 0
    # Its own token: transformers' collators mask pad targets, which would drop every EOS target.
    assert hf.pad_token == PAD_TOKEN and hf.pad_token_id == hf.convert_tokens_to_ids(PAD_TOKEN) == 1
    text = "".join(generate_documents(WORLD, "pretrain", n_chars=20_000))
    assert PAD_TOKEN not in text and hf.pad_token_id not in hf(text)["input_ids"]


def test_tokenizer_round_trips_text_and_keeps_eos_whole(tok) -> None:
    text = "Q: Where does Zorvan Keld live?\nA: Pellmoor, 1953 — naïve ünïcode ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: any text round-trips, unseen characters included
    ids = tok("a" + EOS_TOKEN + "b", add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id in ids
    assert tok("12345", add_special_tokens=False)["input_ids"] == [
        tok.convert_tokens_to_ids(c) for c in "12345"
    ]


def test_default_problems_fit_in_128_tokens(tok) -> None:
    problems = World(WORLD).reasoning_problems(300)
    lengths = [len(tok(p.prompt + p.solution, add_special_tokens=False)["input_ids"]) for p in problems]
    assert max(lengths) < 128
    assert sum(lengths) / len(lengths) < 90


def test_fingerprint_is_content_based(tok, tok_dir: Path, tmp_path: Path) -> None:
    again = load_tokenizer(save_tokenizer(tok, tmp_path / "copy"))
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    other = train_tokenizer(generate_documents(WORLD, "midtrain", n_chars=100_000), vocab_size=512)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


def test_tokenizer_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(TokenizerError, match="no merges"):
        train_tokenizer([], vocab_size=512)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="not a directory"):
        load_tokenizer(tmp_path / "file")
    with pytest.raises(TokenizerError, match="output path exists"):
        save_tokenizer(object(), tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="unreadable tokenizer.json"):
        load_tokenizer(tmp_path / "bad")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "wrong")
    assert issubclass(TokenizerError, ValueError)


# -- sources --------------------------------------------------------------------------------------------


def test_txt_documents_are_separated_by_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("first line\nsecond line\n\n\n  only one  \n \t \nlast\n", encoding="utf-8")
    assert list(read_documents(f)) == ["first line\nsecond line", "only one", "last"]


def test_jsonl_field_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "one", "x": 1}\n\n{"text": "two"}\n{"text": "   "}\n', encoding="utf-8")
    assert list(read_documents(f)) == ["one", "two"]
    g = tmp_path / "b.jsonl"
    g.write_text('{"body": "hello"}\n', encoding="utf-8")
    assert list(read_documents(g, text_field="body")) == ["hello"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"other": "x"}\n', "line 2: no 'text' field"),
        ('{"text": "ok"}\n{broken\n', "line 2: invalid JSON"),
        ('{"text": 5}\n', "is int, not text"),
        ("[1, 2]\n", "line 1: no 'text' field"),
    ],
)
def test_jsonl_errors(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataSourceError, match=message):
        list(read_documents(f))


def test_folder_is_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.jsonl").write_text('{"text": "from jsonl"}\n', encoding="utf-8")
    (tmp_path / "a.txt").write_text("from txt\n\nsecond", encoding="utf-8")
    (tmp_path / "c.txt").write_text("", encoding="utf-8")  # empty files inside a folder are skipped
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    source = open_source(tmp_path)
    assert [f.name for f in source.files] == ["a.txt", "z.jsonl"]
    assert list(source.documents()) == ["from txt", "second", "from jsonl"]


def test_identity_tracks_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one", encoding="utf-8")
    before = open_source(f).identity()
    assert before == open_source(f).identity()
    f.write_text("one two", encoding="utf-8")
    os.utime(f, ns=(1, 1))
    assert open_source(f).identity() != before
    assert open_source(f, text_field="body").identity() != open_source(f).identity()


def test_source_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataSourceError, match="path does not exist"):
        open_source(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataSourceError, match="empty file"):
        open_source(tmp_path / "empty.txt")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataSourceError, match="unsupported file type"):
        open_source(tmp_path / "data.csv")
    (tmp_path / "blank.txt").write_text("\n \n\t\n")
    with pytest.raises(DataSourceError, match="no documents"):
        list(read_documents(tmp_path / "blank.txt"))
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataSourceError, match="cannot read"):
        list(read_documents(tmp_path / "latin.txt"))
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.md").write_text("x")
    with pytest.raises(DataSourceError, match="no .txt/.jsonl/.parquet files"):
        open_source(tmp_path / "nothing")
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "x.txt").write_text("")
    with pytest.raises(DataSourceError, match="are empty"):
        open_source(tmp_path / "hollow")
    with pytest.raises(DataSourceError, match="text_field"):
        open_source(tmp_path / "latin.txt", text_field="")
    assert issubclass(DataSourceError, ValueError)


def test_missing_path_is_a_hub_name_only_when_datasets_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: object())
    source = open_source("someone/some-dataset", split="validation")  # nothing is downloaded here
    assert source.hf_name == "someone/some-dataset" and source.hf_split == "validation"
    assert source.identity() == {"hf": "someone/some-dataset", "split": "validation", "text_field": "text"}
    for local in (tmp_path / "missing", "./missing", "data/missing.jsonl"):
        with pytest.raises(DataSourceError, match="path does not exist"):
            open_source(local)


def test_parquet_without_pyarrow_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real_find_spec(name, *a)
    )
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataSourceError, match="needs pyarrow"):
        open_source(tmp_path / "a.parquet")


def test_parquet_with_pyarrow(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["one", None, "two"], "n": [1, 2, 3]}), tmp_path / "a.parquet")
    assert list(read_documents(tmp_path / "a.parquet")) == ["one", "two"]
    with pytest.raises(DataSourceError, match="no 'body' column"):
        list(read_documents(tmp_path / "a.parquet", text_field="body"))


# -- token shards ---------------------------------------------------------------------------------------


def _reference_tokens(docs: list[str], tok) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def test_token_dtype() -> None:
    assert token_dtype(2048) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_shard_matches_per_document_tokenisation(tok, tmp_path: Path) -> None:
    docs = list(generate_documents(WORLD, "midtrain", n_documents=2500))  # > one encode batch
    tokens = cached_tokens(iter(docs), tok, tmp_path, world_identity(WORLD, "midtrain", n_documents=2500))
    assert tokens.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(_reference_tokens(docs, tok)))
    assert int((tokens == tok.eos_token_id).sum()) == len(docs)
    key = cache_key(world_identity(WORLD, "midtrain", n_documents=2500), tok)
    assert shard_info(tmp_path, key)["n_documents"] == 2500
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_shard_ignores_padding_left_on_in_the_tokenizer(tok_dir: Path, tmp_path: Path) -> None:
    """A padded call leaves padding on in the Rust tokenizer (and a tokenizer.json saved by other tools may
    have it too); a shard still holds each document's own tokens, never pad tokens."""
    padded = load_tokenizer(tok_dir)
    padded.padding_side = "left"
    padded(["a", "a much longer text"], padding=True)
    assert padded.backend_tokenizer.padding is not None
    docs = ["one", "two three four five six", "seven"]
    tokens = cached_tokens(docs, padded, tmp_path, {"name": "padded"})
    np.testing.assert_array_equal(np.asarray(tokens), _reference_tokens(docs, load_tokenizer(tok_dir)))
    assert padded.pad_token_id not in np.asarray(tokens)


def test_shards_of_an_earlier_cache_format_are_rebuilt(tok, tmp_path: Path, monkeypatch) -> None:
    """Version-1 shards of a tokenizer saved with padding on may hold pad tokens: none is reused."""
    from rlready.data import shards

    ident = {"name": "v1"}
    monkeypatch.setattr(shards, "FORMAT_VERSION", 1)
    cached_tokens(["one two", "three"], tok, tmp_path, ident)
    old_key = cache_key(ident, tok)
    monkeypatch.undo()
    assert shards.FORMAT_VERSION > 1 and cache_key(ident, tok) != old_key
    assert load_shard(tmp_path, old_key) is None  # nor is the old file itself valid any more


def test_second_call_reuses_cache_without_tokenising(tok, tmp_path: Path) -> None:
    ident = {"name": "reuse"}
    first = cached_tokens(["alpha beta", "gamma"], tok, tmp_path, ident)
    bin_file = next(tmp_path.glob("*.bin"))
    stamp = bin_file.stat().st_mtime_ns

    def must_not_iterate():
        raise AssertionError("documents were read again")
        yield ""

    second = cached_tokens(must_not_iterate(), tok, tmp_path, ident)
    np.testing.assert_array_equal(first, second)
    assert bin_file.stat().st_mtime_ns == stamp
    # Another identity or another tokenizer is another key.
    cached_tokens(["other"], tok, tmp_path, {"name": "other"})
    assert len(list(tmp_path.glob("*.bin"))) == 2


def test_interrupted_write_leaves_no_valid_shard(tok, tmp_path: Path) -> None:
    ident = {"name": "interrupted"}

    def dies_midway():
        yield from ["doc"] * 2000
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_tokens(dies_midway(), tok, tmp_path, ident)
    assert list(tmp_path.iterdir()) == []
    assert load_shard(tmp_path, cache_key(ident, tok)) is None
    tokens = cached_tokens(["doc"], tok, tmp_path, ident)
    np.testing.assert_array_equal(tokens, _reference_tokens(["doc"], tok))


def test_truncated_or_headerless_shard_is_rebuilt(tok, tmp_path: Path) -> None:
    ident = {"name": "trunc"}
    expected = np.asarray(cached_tokens(["one two three", "four"], tok, tmp_path, ident))
    key = cache_key(ident, tok)
    bin_file = tmp_path / f"{key}.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:-2])
    assert load_shard(tmp_path, key) is None
    np.testing.assert_array_equal(cached_tokens(["one two three", "four"], tok, tmp_path, ident), expected)
    (tmp_path / f"{key}.json").unlink()
    assert load_shard(tmp_path, key) is None


def test_shard_bad_input(tok, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no documents"):
        cached_tokens([], tok, tmp_path, {"name": "empty"})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="JSON"):
        cached_tokens(["x"], tok, tmp_path, {"path": Path("x")})
    with pytest.raises(ValueError, match="no token shard"):
        shard_info(tmp_path, "0" * 64)
