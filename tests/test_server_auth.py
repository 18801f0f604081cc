"""The compose stack's Prefect access control, on a real server: the settings that
docker/compose.yaml gives the server and its clients, with a planted auth string."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import running_prefect_server

pytestmark = [pytest.mark.slow, pytest.mark.server]
COMPOSE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"
PLANTED = "covid-admin:planted-Auth-7f3e9c"
FLOW = """
from prefect import flow, get_run_logger

@flow(name="auth-check")
def auth_check():
    get_run_logger().info("hello from an authenticated client")
    return 1

auth_check()
"""


def compose_env(service: str) -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"][service]["environment"]


def auth_setting(env: dict) -> str:
    """The name of the setting that compose fills with ${PREFECT_AUTH_STRING}."""
    (name,) = [k for k, v in env.items() if str(v).startswith("${PREFECT_AUTH_STRING")]
    return name


def post(url: str, body: dict, auth: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if auth:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def refused_url(stderr: str, api: str) -> str | None:
    """The URL on ``api`` whose 401 answer, with the auth middleware's body, the client
    died of; None when it died of anything else (server down, a crash, another status)."""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    found = re.match(
        rf"prefect\.exceptions\.PrefectHTTPStatusError: Client error '401 Unauthorized' "
        rf"for url '({re.escape(api)}/[^']*)' - Response: "
        r"\{'exception_message': 'Unauthorized'\}", last)
    return found.group(1) if found else None


def get_status(url: str, auth: str) -> int:
    request = urllib.request.Request(url)
    token = base64.b64encode(auth.encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_compose_server_auth_rejects_strangers_and_admits_configured_clients(tmp_path):
    server_setting = auth_setting(compose_env("prefect-server"))
    client_setting = auth_setting(compose_env("prefect-worker"))
    assert server_setting == "PREFECT_SERVER_API_AUTH_STRING"
    with running_prefect_server(tmp_path, **{server_setting: PLANTED}) as (api, server_log):
        with urllib.request.urlopen(f"{api}/health", timeout=5) as r:  # the healthcheck
            assert r.status == 200
        assert post(f"{api}/flows/filter", {})[0] == 401
        assert post(f"{api}/flows/filter", {}, "covid-admin:wrong")[0] == 401

        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_API_URL": api, client_setting: PLANTED,
                    "PREFECT_HOME": str(tmp_path / "client")})
        done = subprocess.run([sys.executable, "-c", FLOW], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        env.pop(client_setting)
        refused = subprocess.run([sys.executable, "-c", FLOW], env=env, capture_output=True,
                                 text=True, timeout=300)
        # refused by this server's auth (HTTP 401), not down, elsewhere or crashed
        assert refused.returncode != 0
        url = refused_url(refused.stderr, api)
        assert url, refused.stderr[-3000:]
        # the very request it was refused, sent with the credential, is served (a real
        # route: 200, or 405 for a route that wants another method; a wrong URL is 404)
        assert get_status(url, PLANTED) in (200, 405), url

        status, runs = post(f"{api}/flow_runs/filter", {}, PLANTED)
        assert status == 200
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        status, logs = post(f"{api}/logs/filter", {"limit": 200}, PLANTED)
        assert any("authenticated client" in log["message"] for log in logs)
        assert not [log["message"] for log in logs if "planted-Auth" in log["message"]]
        secret = PLANTED.split(":", 1)[1]
        for text in (done.stdout, done.stderr, refused.stdout, refused.stderr):
            assert secret not in text
    assert secret not in server_log.read_text()
