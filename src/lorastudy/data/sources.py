"""A profile's datasets as records: `{world}` in a source means the profile's generated mini-world folder."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lorastudy.config import DatasetSpec, Profile
from lorastudy.data.adapters import iter_texts, load_records
from lorastudy.data.records import Record
from lorastudy.data.world import ensure_world


def world_dir(profile: Profile) -> Path:
    """The profile's mini world folder, generated on first use."""
    return ensure_world(profile.base.world)


def resolve_source(profile: Profile, source: str) -> str:
    if "{world}" in source:
        return source.replace("{world}", str(world_dir(profile)))
    return source


def load_spec(profile: Profile, spec: DatasetSpec) -> list[Record]:
    """Records of a dataset spec through its adapter (the same code for local files and hub ids)."""
    hub: dict = _hub_kw(spec)
    if spec.streaming:  # otherwise the adapter streams exactly when a limit is set
        hub["streaming"] = True
    return load_records(spec.adapter, resolve_source(profile, spec.source), split=spec.split, limit=spec.limit, **hub)


def streams(profile: Profile, domain: str, regime: str) -> bool:
    """A CPT corpus read as a stream (its spec's `streaming: true`), never held in memory; IFT sets are held
    (epochs re-read them in a new order)."""
    return regime == "cpt" and profile.data[domain][regime].streaming


def _hub_kw(spec: DatasetSpec) -> dict[str, str]:
    return {k: v for k, v in (("subset", spec.subset), ("data_dir", spec.data_dir)) if v is not None}


def stream_texts(profile: Profile, spec: DatasetSpec) -> Callable[[int], Iterator[str]]:
    """`open(skip)`: the CPT corpus' documents from document `skip` on (up to the spec's limit), read lazily;
    what a streamed run (data.stream.StreamData) reads, and reads again from a checkpoint's position."""
    source = resolve_source(profile, spec.source)

    def open_texts(skip: int) -> Iterator[str]:
        return iter_texts(spec.adapter, source, split=spec.split, skip=skip, limit=spec.limit, **_hub_kw(spec))

    return open_texts
