"""Parquet tables stamped with what made them (a format, the decoder's and libraries'
versions): a table with another stamp, or none, or one that cannot be read, reads as
missing, so a cache of derived facts is never trusted across a change that alters them."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from covid_pipeline import storage


def write_stamped(uri: str, frame: pd.DataFrame, key: bytes, stamp: str) -> None:
    """Write ``frame`` to ``uri`` as Parquet (atomically), ``stamp`` under ``key`` in its
    schema's metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           key: stamp.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def read_stamped(uri: str, key: bytes, stamp: str) -> pd.DataFrame | None:
    """The table at ``uri`` if it carries ``stamp`` under ``key``; None when it is missing,
    unreadable or stamped otherwise."""
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except (FileNotFoundError, OSError, ValueError, storage.StorageError):
        return None
    if (table.schema.metadata or {}).get(key, b"").decode() != stamp:
        return None
    return table.to_pandas()
