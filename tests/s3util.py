"""A moto S3 server on loopback holding a copy of a local folder, for s3fs tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from netutil import free_port


@contextlib.contextmanager
def moto_s3(server_class, bucket: str, data: Path, secret: str = "testing") -> Iterator:
    """Start ``server_class`` (ThreadedMotoServer or a subclass) on 127.0.0.1, point s3fs at
    it through the environment, copy ``data`` to ``s3://<bucket>/data/``; yield the
    filesystem, then restore the environment and stop the server."""
    server = server_class(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    for path in Path(data).rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{bucket}/data/{path.relative_to(data)}", path.read_bytes())
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
