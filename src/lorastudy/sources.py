"""Resolve a dataset spec's source: `{world}` means the profile's generated mini-world folder."""
from __future__ import annotations

from lorastudy.config import DatasetSpec, Profile


def resolve_source(profile: Profile, source: str) -> str:
    if "{world}" in source:
        from lorastudy.modeling import world_dir

        return source.replace("{world}", str(world_dir(profile)))
    return source


def load_spec(profile: Profile, spec: DatasetSpec) -> list:
    """Records of a dataset spec through its adapter (the same code for local files and hub ids)."""
    from lorastudy.data.adapters import load_records

    hub = {k: v for k, v in (("subset", spec.subset), ("data_dir", spec.data_dir)) if v is not None}
    if spec.streaming:  # otherwise the adapter streams exactly when a limit is set
        hub["streaming"] = True
    return load_records(spec.adapter, resolve_source(profile, spec.source), split=spec.split, limit=spec.limit, **hub)
