"""The user-facing errors, and the rule for which failures are worth a retry.

:class:`PipelineError` is the base of every error that is the user's to fix (the CLI prints
it as one line and exits 2): :class:`ConfigError` (settings, presets, config files, flags),
:class:`DataError` (source data and metadata) and :class:`StorageError` (reads and writes).
Anything else is a bug or an environment failure and keeps its traceback.
Kept dependency-free so the CLI starts fast.
"""

from __future__ import annotations

import errno


class PipelineError(Exception):
    """An error the user can fix: a one-line message that names the file or setting and
    the fix."""


class ConfigError(PipelineError, ValueError):
    """A bad setting, flag, preset or config file."""


class DataError(PipelineError, ValueError):
    """Unusable source data: missing metadata, no images of a class, too few patients."""


class StorageError(PipelineError, RuntimeError):
    """A read or write failed; the message names the URI and what to do."""


# errno values of failures that another attempt can cure (network, busy or timed-out I/O).
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN,
    errno.EBUSY,
})
# Exception classes of the storage and cluster libraries that mean "the network or a
# worker went away", named so that this module imports none of them.
TRANSIENT_NAMES = frozenset({
    "KilledWorker", "CommClosedError", "StreamClosedError",  # Dask, Tornado
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",  # botocore
    "ConnectionClosedError", "ServerDisconnectedError", "ClientConnectorError",  # aiohttp
    "ClientOSError", "ClientPayloadError", "ServerTimeoutError",
})


def is_transient(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a network, storage-service
    or lost-worker failure, which a retry may cure; False for everything deterministic
    (bad parameters or data, a model that cannot run, a damaged file)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConfigError | DataError):
            return False
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        if any(cls.__name__ in TRANSIENT_NAMES for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
