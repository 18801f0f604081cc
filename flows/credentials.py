"""Object-storage credentials from a Prefect block, for the flow and the workers it starts.

s3fs (through botocore) reads credentials from the environment. A run may name a block
instead, as ``secret/<block-name>`` (Prefect's block slug): Prefect's built-in Secret
block, shown obfuscated in the UI, holding a JSON object with ``aws_access_key_id``,
``aws_secret_access_key`` and optionally ``aws_session_token``, ``region_name`` and
``endpoint_url`` (MinIO and other S3-compatible stores)::

    Secret(value={"aws_access_key_id": "…", "aws_secret_access_key": "…",
                  "endpoint_url": "http://minio:9000"}).save("minio-credentials")

The values are put into the flow process' environment, which local Dask worker processes
inherit; workers of an existing cluster use their own environment (see docker/README.md).
They never enter parameters, logs, artifacts or results: only the block's name does.
"""

from __future__ import annotations

import os

from covid_pipeline.errors import ConfigError

ENV = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "region_name": "AWS_DEFAULT_REGION",
    "endpoint_url": "AWS_ENDPOINT_URL",
}
KINDS = ("secret",)


def check_block_name(ref: str) -> tuple[str, str]:
    """``"secret/minio"`` → ``("secret", "minio")``; a one-line error for anything else."""
    kind, _, name = ref.partition("/")
    if kind not in KINDS or not name:
        raise ConfigError(f"credentials block {ref!r} is not secret/<block name>; "
                            "e.g. --credentials-block secret/minio-credentials")
    return kind, name


def block_values(ref: str) -> dict[str, str]:
    """Load the block ``ref`` and return its credentials under the keys of :data:`ENV`."""
    from prefect.blocks.core import Block

    _, name = check_block_name(ref)
    try:
        data = Block.load(ref).get()
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"credentials block {ref!r} could not be loaded ({type(exc).__name__})"
                            f"; create it in the Prefect UI or with Secret(...).save") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Secret block {name!r} must hold a JSON object with "
                            "aws_access_key_id and aws_secret_access_key")
    values = {key: str(data[key]) for key in ENV if data.get(key)}
    missing = {"aws_access_key_id", "aws_secret_access_key"} - set(values)
    if missing:
        raise ConfigError(f"credentials block {ref!r} lacks {', '.join(sorted(missing))}")
    return values


def apply_block(ref: str | None) -> list[str]:
    """Export the block's credentials to this process' environment; the names set."""
    if not ref:
        return []
    values = block_values(ref)
    for key, value in values.items():
        os.environ[ENV[key]] = value
    try:  # cached filesystems were made with the old credentials
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    return [ENV[key] for key in values]
