"""Files: atomic writes (a kill -9 at any moment leaves the old file or the new one, never a torn one),
JSON and JSON-lines reads that name the file and line of what is wrong, and stable hashes of JSON-able settings
(cache keys)."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, TextIO


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


class DataFileError(ValueError):
    """A file that does not hold what was expected; the message names the file, the line and what was expected,
    so the command line can print it as one line (exit 2) instead of a traceback."""


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


_MAGIC = {b"\x1f\x8b": gzip.open, b"BZ": bz2.open}


def open_text(path: str | os.PathLike) -> TextIO:
    """A text file, plain or gzip/bz2-compressed (told apart by its first bytes, not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = _MAGIC.get(head, open)
    return opener(path, "rt", encoding="utf-8")  # type: ignore[operator]


def _expected(keys: Collection[str]) -> str:
    return f"one JSON object per line with {', '.join(repr(k) for k in keys)}" if keys else "one JSON object per line"


def json_lines(fh: IO[str], name: str, *, required: Collection[str] = (), arrays: bool = False,
               whole: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a text stream, one per non-blank line, checked as they are read: a line that is
    not JSON, not an object, or lacks a `required` key raises DataFileError naming `name` and the line.

    arrays: a line holding a JSON array gives its items (dataset files). whole: a document that is not one value
    per line (a pretty-printed .json) is parsed whole from its first line on: JSON has no lazy form for it."""
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            if not whole:
                raise DataFileError(f"{name}: line {n} is not JSON ({err.msg} at column {err.colno}); expected "
                                    f"{_expected(required)}") from None
            try:
                value = json.loads(line + fh.read())
            except json.JSONDecodeError as err2:
                raise DataFileError(f"{name}: not JSON ({err2.msg} at line {n + err2.lineno - 1}, column "
                                    f"{err2.colno})") from None
        whole = False
        for row in value if arrays and isinstance(value, list) else [value]:
            if not isinstance(row, dict):
                raise DataFileError(f"{name}: line {n} holds a JSON {type(row).__name__}, not an object; expected "
                                    f"{_expected(required)}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataFileError(f"{name}: line {n} lacks {', '.join(repr(k) for k in missing)}; expected "
                                    f"{_expected(required)} (this line has {', '.join(map(repr, row)) or 'none'})")
            yield n, row


def numbered_jsonl(path: str | os.PathLike, *, required: Collection[str] = (),
                   allow_empty: bool = False) -> list[tuple[int, dict]]:
    """(line number, object) of every object of a JSON-lines file (plain, .gz or .bz2), checked by `json_lines`;
    an empty file is an error unless `allow_empty`, since a scorer that reads nothing would report nothing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open_text(path) as fh:
        try:
            rows = list(json_lines(fh, str(path), required=required))
        except (UnicodeDecodeError, EOFError, OSError) as err:  # not text, or a damaged .gz/.bz2
            raise DataFileError(f"{path}: not readable as UTF-8 JSON lines ({err})") from None
    if not rows and not allow_empty:
        raise DataFileError(f"{path}: empty; expected {_expected(required)}")
    return rows


def read_jsonl(path: str | os.PathLike, *, required: Collection[str] = (), allow_empty: bool = False) -> list[dict]:
    """The objects of a JSON-lines file, checked as `numbered_jsonl` checks them."""
    return [row for _, row in numbered_jsonl(path, required=required, allow_empty=allow_empty)]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks (checksums of shipped files, content keys of tables)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(obj: Any, n: int = 10) -> str:
    """A short stable hash of a JSON-able object (cache keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
