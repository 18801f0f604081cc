"""One place for every read and write: fsspec URIs in, atomic writes out.

Local paths and ``file://`` URIs are written to a temporary name in the same folder and
renamed, so a reader never sees half a file. Object stores (``s3://`` through s3fs) commit
an object only when its upload completes, which gives the same guarantee.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import fsspec
from fsspec.core import url_to_fs

from covid_pipeline.errors import StorageError as StorageError  # callers catch it from here


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The file system path of a local URI: ``file://`` dropped and ``~`` expanded (as
    fsspec does: a source given as ``~/data`` where no shell expanded it)."""
    return os.path.expanduser(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for local paths and object-store URIs)."""
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def _unusable(uri: str, exc: OSError, action: str) -> StorageError:
    return StorageError(f"{uri}: cannot {action} ({exc}); check the path, permissions and "
                        "credentials")


# Local files take the os module's path, not fsspec's: resolving a URI to its filesystem
# held the GIL for ~0.25 ms a call, 12 % of a threaded ingest's GIL time (py-spy --gil),
# where a file's read or existence is one system call.


def exists(uri: str) -> bool:
    if is_local(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri)
    try:
        return bool(fs.exists(path))
    except OSError as exc:  # e.g. S3's 403: a user's fix, not a bug
        raise _unusable(uri, exc, "look up") from exc


def size(uri: str) -> int | None:
    """Bytes of the file at ``uri``, None when there is none."""
    fs, path = filesystem(uri)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unusable(uri, exc, "look up") from exc


def read_bytes(uri: str) -> bytes:
    if is_local(uri):
        try:
            with open(local_path(uri), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read ({exc}); check the path and "
                               "permissions") from exc
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"{uri}: cannot read ({exc}); check the path and permissions") from exc


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


@contextlib.contextmanager
def writing(uri: str) -> Iterator[str]:
    """A local path to write ``uri``'s content to, committed when the block ends without an
    error: renamed into place (local) or uploaded whole (object stores); else removed.

    For content too large to hold in memory: write it in pieces to the path.
    """
    local = is_local(uri)
    folder = (os.path.dirname(os.path.abspath(local_path(uri))) if local
              else local_cache_dir("uploads"))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise StorageError(
            f"{uri}: cannot write ({exc.strerror or exc}); choose a writable --out location"
        ) from exc
    try:
        yield tmp
        try:
            if local:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, local_path(uri))
            else:
                fs, path = filesystem(uri)
                fs.put_file(tmp, path)
        except OSError as exc:
            raise StorageError(
                f"{uri}: cannot write ({exc.strerror or exc}); " + (
                    "free space or choose another --out" if local
                    else "check the bucket and credentials")
            ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` to ``uri`` atomically; return the URI."""
    if is_local(uri):
        with writing(uri) as tmp:
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
            except OSError as exc:
                raise StorageError(f"{uri}: cannot write ({exc.strerror or exc}); free "
                                   "space or choose another --out") from exc
        return uri
    fs, path = filesystem(uri)
    try:
        fs.pipe_file(path, data)
    except OSError as exc:
        raise StorageError(
            f"{uri}: cannot write ({exc}); check the bucket and credentials"
        ) from exc
    return uri


def file_sha256(path: str) -> str:
    """sha256 of a local file, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[Any]:
    """A binary file object reading ``uri`` lazily (for files too large to hold)."""
    fs, path = filesystem(uri)
    try:
        fh = fs.open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"{uri}: cannot read ({exc}); check the path and permissions") from exc
    with fh:
        yield fh


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> str:
    return write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class FileStat(NamedTuple):
    """What identifies a file's bytes without reading them: its size and a version token
    (local: mtime and ctime in ns and the inode, so a file replaced in place is seen even
    when its mtime was kept; object stores: the version id or ETag)."""

    size: int
    token: str


# the listings of a listing scope: {source root URI: {file URI: FileStat}}
_LISTINGS: contextvars.ContextVar[dict[str, dict[str, FileStat]] | None] = (
    contextvars.ContextVar("covid_pipeline_listings", default=None))


@contextlib.contextmanager
def listing_scope() -> Iterator[None]:
    """Within it, :func:`list_files` under a folder that :func:`file_stats` listed is
    answered from that listing (one listing per source per run)."""
    token = _LISTINGS.set({})
    try:
        yield
    finally:
        _LISTINGS.reset(token)


def _version_token(fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]) -> str:
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        st = os.stat(path)
        return f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    for key in ("VersionId", "version_id", "ETag", "etag", "LastModified", "mtime"):
        if info.get(key):
            return f"{key}:{info[key]}"
    return ""  # nothing identifies this file's version: never trusted without reading


def file_stats(uri: str) -> dict[str, FileStat]:
    """Size and version token of every file under a folder URI, keyed by file URI: one
    recursive listing (on S3 one LIST request per 1,000 objects), no reads."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    except OSError as exc:
        raise _unusable(uri, exc, "list") from exc
    stats = {_to_uri(uri, path, name): FileStat(int(info.get("size") or 0),
                                                _version_token(fs, name, info))
             for name, info in found.items() if info.get("type") == "file"}
    listings = _LISTINGS.get()
    if listings is not None:
        listings[uri.rstrip("/")] = stats
    return stats


def _listed(uri: str) -> list[str] | None:
    """The files under ``uri`` from the listing scope, if a listed folder holds it."""
    folder = uri.rstrip("/")
    for root, stats in (_LISTINGS.get() or {}).items():
        if folder == root or folder.startswith(root + "/"):
            return sorted(u for u in stats if u.startswith(folder + "/"))
    return None


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Files under a folder URI, as URIs of the same scheme, sorted."""
    listed = _listed(uri) if recursive else None
    if listed is not None:
        return listed
    fs, path = filesystem(uri)
    try:
        if not fs.exists(path):
            return []
        if recursive:
            names = fs.find(path)
        else:
            names = [info["name"] for info in fs.ls(path, detail=True)
                     if info.get("type") == "file"]
    except OSError as exc:
        raise _unusable(uri, exc, "list") from exc
    return sorted(_to_uri(uri, path, n) for n in names)


def file_sizes(uri: str) -> dict[str, int]:
    """Bytes of every file under a folder URI, keyed by path relative to it.

    One recursive listing (on S3 one LIST request per 1,000 objects), no reads; the
    listing cache is dropped first, so files written by other processes are seen.
    """
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _unusable(uri, exc, "list") from exc
    return {posixpath.relpath(name, path): int(info["size"]) for name, info in found.items()
            if info.get("type") == "file"}


def _to_uri(base_uri: str, base_path: str, name: str) -> str:
    rel = posixpath.relpath(name, base_path) if name != base_path else ""
    return join(base_uri, rel)


def local_cache_dir(*parts: str) -> str:
    """This machine's cache folder: ``$COVID_PIPELINE_CACHE`` or the temporary folder's."""
    base = os.environ.get("COVID_PIPELINE_CACHE",
                          os.path.join(tempfile.gettempdir(), "covid-pipeline-cache"))
    return os.path.join(base, *parts)


def stage_local(uri: str, cache_dir: str) -> str:
    """Return a local path holding ``uri``'s content (a copy for remote URIs)."""
    if is_local(uri):
        return local_path(uri)
    fs, path = filesystem(uri)
    dest = os.path.join(cache_dir, path.replace("/", "__"))
    if not os.path.exists(dest):
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(cache_dir, exist_ok=True)
            fs.get_file(path, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # never leave a partial download behind
            if isinstance(exc, FileNotFoundError):
                raise
            raise StorageError(
                f"{uri}: cannot copy to {cache_dir} ({exc}); free space or set "
                "COVID_PIPELINE_CACHE"
            ) from exc
    return dest
