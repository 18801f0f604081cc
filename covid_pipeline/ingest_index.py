"""The ingest index: what reading each source file gave, so that a re-run reads only new or
changed files.

One Parquet table under ``<out>/index/ingest.parquet``: per file URI its size and version
token (:class:`storage.FileStat`: local mtime/ctime/inode, object-store version id or
ETag) and the facts reading it gave (JSON: the sha256 and the decoded facts the manifest
needs, or the reason it was quarantined). An entry is trusted only while the listing shows
the same size and token. Written atomically (a whole new file, then a rename or a
completed upload) after each chunk of reads, so an interrupted ingest keeps what it read.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import PIL

from covid_pipeline import imaging, layout
from covid_pipeline.stamped import read_stamped, write_stamped
from covid_pipeline.storage import FileStat

FORMAT = 1
COLUMNS = ["uri", "size", "token", "facts"]
FINGERPRINT_KEY = b"covid_pipeline.ingest_index"


def fingerprint() -> str:
    """What made the facts besides the files: this format, the decoder's version and the
    image libraries'. Another fingerprint discards the whole index (every file is read
    again), so a decoder fix or a library upgrade never leaves stale facts or rejections."""
    import pydicom  # seconds to import; only for its version here

    return json.dumps({"format": FORMAT, "decoder": imaging.DECODER_VERSION,
                       "pillow": PIL.__version__, "pydicom": pydicom.__version__},
                      sort_keys=True)


class IngestIndex:
    """File URI → (FileStat, facts) of earlier reads; :meth:`save` writes it back."""

    def __init__(self, out: str) -> None:
        self.uri = layout.ingest_index(out)
        self.entries: dict[str, tuple[FileStat, str]] = {}
        # none yet, unreadable or made otherwise: every file is read again
        table = read_stamped(self.uri, FINGERPRINT_KEY, fingerprint())
        if table is not None and list(table.columns) == COLUMNS:
            for uri, size, token, facts in table.itertuples(index=False):
                self.entries[str(uri)] = (FileStat(int(size), str(token)), str(facts))

    def lookup(self, uri: str, stat: FileStat | None) -> dict[str, Any] | None:
        """The facts of ``uri`` if it was read at this size and version, else None."""
        if stat is None or not stat.token:
            return None
        entry = self.entries.get(uri)
        if entry is None or entry[0] != stat:
            return None
        return json.loads(entry[1])

    def record(self, uri: str, stat: FileStat | None, facts: dict[str, Any]) -> None:
        if stat is not None and stat.token:
            self.entries[uri] = (stat, json.dumps(facts, sort_keys=True))

    def forget_missing(self, roots: list[str], listed: set[str]) -> None:
        """Drop entries under ``roots`` whose files the listing no longer shows."""
        prefixes = tuple(r.rstrip("/") + "/" for r in roots)
        for uri in [u for u in self.entries if u.startswith(prefixes) and u not in listed]:
            del self.entries[uri]

    def save(self) -> None:
        rows = sorted(self.entries.items())
        table = pd.DataFrame({
            "uri": [u for u, _ in rows],
            "size": pd.Series([e[0].size for _, e in rows], dtype="int64"),
            "token": [e[0].token for _, e in rows],
            "facts": [e[1] for _, e in rows],
        }, columns=COLUMNS)
        write_stamped(self.uri, table, FINGERPRINT_KEY, fingerprint())
