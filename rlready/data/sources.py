"""Real text data: local ``.txt`` / ``.jsonl`` / ``.parquet`` files or folders, or a Hugging Face dataset.

Document conventions:

- ``.txt``: documents are separated by one or more blank lines (whitespace-only lines count as blank);
  single newlines inside a document are kept. Leading/trailing whitespace of each document is stripped.
- ``.jsonl``: one JSON object per non-blank line; the document is the string field ``text_field``.
- ``.parquet``: the string column ``text_field`` (needs the optional ``pyarrow``: ``rlready[data]``).
- a folder: every file with one of those suffixes under it, recursively, in sorted path order; empty files
  inside a folder are skipped.
- a name that is not a local path: a Hugging Face dataset, streamed, only when ``datasets`` is installed.

Whitespace-only documents are dropped everywhere. ``TextSource.identity()`` (paths, sizes, mtimes, or the
dataset name) keys the token cache in ``shards.py``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".txt", ".jsonl", ".parquet")


class DataSourceError(ValueError):
    """A data source is missing, empty, unreadable or lacks its text field."""


@dataclass(frozen=True)
class TextSource:
    """A validated source of documents: local ``files``, or a Hugging Face dataset ``hf_name``."""

    origin: str
    files: tuple[Path, ...] = ()
    hf_name: str | None = None
    hf_split: str = "train"
    text_field: str = "text"

    def documents(self) -> Iterator[str]:
        """The documents, in a fixed order. Raises ``DataSourceError`` if there are none."""
        count = 0
        for doc in self._raw_documents():
            if doc.strip():
                count += 1
                yield doc
        if count == 0:
            raise DataSourceError(f"no documents in {self.origin}")

    def identity(self) -> dict[str, Any]:
        """What the data is, for cache keys: a changed file (size or mtime) changes the identity."""
        if self.hf_name is not None:
            return {"hf": self.hf_name, "split": self.hf_split, "text_field": self.text_field}
        files = []
        for f in self.files:
            st = f.stat()
            files.append([str(f), st.st_size, st.st_mtime_ns])
        return {"files": files, "text_field": self.text_field}

    def _raw_documents(self) -> Iterator[str]:
        if self.hf_name is not None:
            yield from _hf_documents(self.hf_name, self.hf_split, self.text_field)
            return
        readers = {".txt": _txt_documents, ".jsonl": _jsonl_documents, ".parquet": _parquet_documents}
        for f in self.files:
            try:
                yield from readers[f.suffix](f, self.text_field)
            except (OSError, UnicodeDecodeError) as e:
                raise DataSourceError(f"cannot read {f}: {type(e).__name__}: {e}") from e


def open_source(path: str | Path, *, text_field: str = "text", split: str = "train") -> TextSource:
    """Validate ``path`` (file, folder, or Hugging Face dataset name) and return its ``TextSource``.

    Checks that need no reading happen here, so a bad path fails before any work; problems inside the
    files (missing field, no documents) surface when ``documents()`` reaches them.
    """
    if not text_field:
        raise DataSourceError("text_field must be a non-empty name")
    p = Path(path).expanduser()
    if not p.exists():
        # A missing "x.txt", "/abs/dir" or "./dir" is a mistyped local path, not a hub name: say so.
        looks_local = p.suffix in SUFFIXES or p.is_absolute() or str(path).startswith((".", "~"))
        if not looks_local and importlib.util.find_spec("datasets") is not None:
            return TextSource(origin=str(path), hf_name=str(path), hf_split=split, text_field=text_field)
        raise DataSourceError(f"path does not exist: {path} (a hub dataset name needs 'datasets' installed)")
    p = p.resolve()
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
        if not found:
            raise DataSourceError(f"no {'/'.join(SUFFIXES)} files in folder {p}")
        files = tuple(f for f in found if f.stat().st_size > 0)
        if not files:
            raise DataSourceError(f"all data files in folder {p} are empty")
    elif p.is_file():
        if p.suffix not in SUFFIXES:
            raise DataSourceError(f"unsupported file type {p.suffix!r} for {p}: expected one of {SUFFIXES}")
        if p.stat().st_size == 0:
            raise DataSourceError(f"empty file: {p}")
        files = (p,)
    else:
        raise DataSourceError(f"not a regular file or folder: {p}")
    if any(f.suffix == ".parquet" for f in files):
        _require_pyarrow()
    return TextSource(origin=str(p), files=files, text_field=text_field)


def read_documents(path: str | Path, *, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """Shortcut for ``open_source(path, ...).documents()``."""
    return open_source(path, text_field=text_field, split=split).documents()


def _txt_documents(path: Path, text_field: str) -> Iterator[str]:
    del text_field  # plain text has no fields
    lines: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).strip()
                lines = []
    if lines:
        yield "".join(lines).strip()


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataSourceError(f"{path} line {n}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict) or text_field not in row:
                raise DataSourceError(f"{path} line {n}: no {text_field!r} field")
            text = row[text_field]
            if not isinstance(text, str):
                raise DataSourceError(
                    f"{path} line {n}: field {text_field!r} is {type(text).__name__}, not text"
                )
            yield text


def _require_pyarrow() -> None:
    if importlib.util.find_spec("pyarrow") is None:
        raise DataSourceError("reading .parquet needs pyarrow: pip install 'rlready[data]'")


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid etc. for a corrupt file
        raise DataSourceError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if text_field not in pf.schema_arrow.names:
        raise DataSourceError(f"{path}: no {text_field!r} column (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataSourceError(f"{path}: column {text_field!r} holds {type(text).__name__}, not text")
            if text is not None:
                yield text


def _hf_documents(name: str, split: str, text_field: str) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # the hub client raises many types; one clear message is what callers need
        raise DataSourceError(f"cannot load Hugging Face dataset {name!r}: {type(e).__name__}: {e}") from e
    for row in ds:
        if text_field not in row:
            raise DataSourceError(f"Hugging Face dataset {name!r} has no {text_field!r} field")
        if isinstance(row[text_field], str):
            yield row[text_field]
