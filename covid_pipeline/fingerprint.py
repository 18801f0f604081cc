"""Cheap change detection for a source: a listing fingerprint, no image is read.

Sizes, modification times or ETags of every file, and the content hash of the metadata
files (CSV), under the source's root. Stored per source under ``<out>/watch/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from covid_pipeline import layout, storage
from covid_pipeline.sources import SourceSpec

METADATA_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class Fingerprint:
    source: str
    digest: str
    files: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stamp(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def fingerprint(spec: SourceSpec) -> Fingerprint:
    """The fingerprint of one source as it is now."""
    fs, root = storage.filesystem(spec.uri)
    listing = fs.find(root, detail=True) if fs.exists(root) else {}
    entries = []
    total = 0
    for path in sorted(listing):
        info = listing[path]
        size = int(info.get("size") or 0)
        total += size
        rel = path[len(root.rstrip("/")) + 1 :]
        entry = [rel, size, _stamp(info)]
        if rel.lower().endswith(METADATA_SUFFIXES):
            entry.append(hashlib.sha256(fs.cat_file(path)).hexdigest())
        entries.append(entry)
    digest = hashlib.sha256(json.dumps([spec.kind, entries]).encode()).hexdigest()
    return Fingerprint(str(spec), digest, len(entries), total)


def state_uri(out: str, spec: SourceSpec) -> str:
    key = hashlib.sha256(str(spec).encode()).hexdigest()[:16]
    return layout.watch_state(out, spec.kind, key)


def previous(out: str, spec: SourceSpec) -> Fingerprint | None:
    uri = state_uri(out, spec)
    if not storage.exists(uri):
        return None
    return Fingerprint(**storage.read_json(uri))


def remember(out: str, spec: SourceSpec, fp: Fingerprint) -> None:
    storage.write_json(state_uri(out, spec), fp.as_dict())
