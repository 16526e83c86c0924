"""Rows of a dataset, one reader for every source: a local file (JSON lines, text, parquet; plain, .gz or .bz2),
a local folder in the hub's layout, or a hub id. A local path never touches the network; only a hub id downloads,
through `datasets.load_dataset` (imported lazily). The adapters turn these rows into records."""
from __future__ import annotations

import bz2
import gzip
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lorastudy.io import json_lines

_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open}
_FORMATS = (".jsonl", ".json", ".txt", ".parquet")


def _file_kind(name: str) -> tuple[str, str]:
    """(format, compression) from a file name, e.g. ('.jsonl', '.gz'); '' where not recognised."""
    name = name.lower()
    comp = next((c for c in _COMPRESSION if name.endswith(c)), "")
    stem = name[: len(name) - len(comp)]
    return next((f for f in _FORMATS if stem.endswith(f)), ""), comp


def looks_like_path(source: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else path-shaped must exist locally, never hit the hub."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or any(_file_kind(source))


def _read_file(path: Path) -> Iterator[dict]:
    """Rows of one local file, lazily: JSON lines and text ({"line": ...}) line by line, parquet by record batch."""
    fmt, comp = _file_kind(path.name)
    if fmt == ".parquet":
        import pyarrow.parquet as pq  # heavy: only parquet snapshots need it

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    with _COMPRESSION.get(comp, open)(path, "rt", encoding="utf-8") as fh:
        if fmt == ".txt":
            yield from ({"line": line.removesuffix("\n")} for line in fh)
        else:
            yield from (row for _, row in json_lines(fh, str(path), arrays=True, whole=fmt == ".json"))


def _folder_config(folder: Path, subset: str | None, hub_kw: dict) -> tuple[str | None, dict]:
    """(config name, extra load_dataset arguments) that pick `subset` out of a local folder in the hub's layout.

    Hub repos name their subsets in two ways, and a downloaded snapshot keeps either:
    - README.md front matter with `configs:` (config_name + data_files per split): the subset is the config name;
    - no declared configs but one folder per subset (`main/test-00000-of-00001.parquet`, `ARC-Challenge/...`):
      the subset is the `data_dir`. Without such a folder (a flat folder), the subset is ignored, as for a file.
    Either way `datasets` then finds the split by file name: `SPLIT-00000-of-00001.parquet`, `data/SPLIT-*.parquet`,
    `SPLIT.jsonl` or a `SPLIT/` folder; files with no split in their name are all `train`.
    """
    from huggingface_hub import metadata_load  # installed with datasets; reads the card's YAML as datasets does

    readme = folder / "README.md"
    card = (metadata_load(readme) if readme.is_file() else None) or {}
    configs = [c["config_name"] for c in card.get("configs", [])]
    if configs:
        if subset is not None and subset not in configs:
            raise ValueError(f"{folder}/README.md declares configs {configs}, not {subset!r}")
        return subset, {}
    if subset and not {"data_dir", "data_files"} & set(hub_kw) and (folder / subset).is_dir():
        return None, {"data_dir": subset}
    return None, {}


def _read_dataset(source: str, subset: str | None, split: str | None, streaming: bool,
                  **hub_kw: Any) -> Iterator[dict]:
    """Rows of a hub id or a local hub-layout folder through `datasets`, loaded now so a bad config fails here."""
    import datasets  # heavy and networked: only hub ids and folders load through it

    ds = datasets.load_dataset(source, subset, split=split or "train", streaming=streaming, **hub_kw)
    return (dict(row) for row in ds)


def iter_rows(source: str, *, split: str | None = None, subset: str | None = None, streaming: bool | None = None,
              **hub_kw: Any) -> Iterator[dict]:
    """Rows one at a time, never the whole source in memory, so continued pre-training can stream a corpus.

    - a local file (split, subset and hub_kw ignored): .jsonl/.json (JSON lines; also .gz/.bz2) and .txt
      ({"line": ...}) line by line, .parquet by record batch; a .json holding one JSON array is parsed whole;
    - a local folder in the hub's layout (see `_folder_config`): through `datasets`, streamed unless
      streaming=False (streaming needs no Arrow copy of the folder in the cache);
    - a hub id: `datasets.load_dataset`, streamed only when streaming is true.
    Bad paths fail here, not at the first row.
    """
    path = Path(source).expanduser()
    if path.is_file():
        fmt, comp = _file_kind(path.name)
        if not fmt or (fmt == ".parquet" and comp):
            raise ValueError(f"{path}: unsupported file type; use .json/.jsonl/.txt (optionally .gz or .bz2) "
                             "or .parquet")
        return _read_file(path)
    if path.is_dir():
        name, extra = _folder_config(path, subset, hub_kw)
        return _read_dataset(str(path), name, split, streaming is not False, **extra, **hub_kw)
    if looks_like_path(source):
        raise FileNotFoundError(f"data file {source!r} does not exist (it looks like a path, so the hub is not tried)")
    return _read_dataset(source, subset, split, bool(streaming), **hub_kw)


def read_rows(source: str, *, split: str | None = None, subset: str | None = None, limit: int | None = None,
              streaming: bool | None = None, **hub_kw: Any) -> list[dict]:
    """The first `limit` rows of iter_rows as a list; with a limit a hub id streams, so only those are downloaded."""
    stream = True if streaming is None and limit is not None else streaming
    return list(itertools.islice(iter_rows(source, split=split, subset=subset, streaming=stream, **hub_kw), limit))


def row_without(source: str, field: str) -> str:
    """'line N' of the first row of a local JSON-lines file that lacks `field` ('a row' for other sources); read
    again on the error path only, so it costs nothing that matters."""
    path = Path(source).expanduser()
    fmt, comp = _file_kind(path.name)
    if not (path.is_file() and fmt in (".jsonl", ".json")):
        return "a row"
    with _COMPRESSION.get(comp, open)(path, "rt", encoding="utf-8") as fh:
        rows = json_lines(fh, str(path), arrays=True, whole=fmt == ".json")
        return next((f"line {n}" for n, row in rows if field not in row), "a row")
