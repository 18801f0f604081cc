"""Object-storage credentials from a Prefect Secret block (flows/credentials.py)."""

from __future__ import annotations

import os

import pytest

from covid_pipeline.errors import ConfigError
from flows import credentials


@pytest.mark.parametrize("ref", ["minio", "secret/", "aws/minio", "/minio"])
def test_bad_block_names_get_one_line_errors(ref):
    with pytest.raises(ConfigError, match="secret/<block name>"):
        credentials.check_block_name(ref)


def test_cli_checks_the_block_name_before_any_work(tmp_path, capsys):
    from flows.cli import main

    rc = main(["run", "--source", f"folder={tmp_path}", "--out", str(tmp_path / "o"),
               "--credentials-block", "minio"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "secret/" in err
    assert not (tmp_path / "o").exists()


def test_secret_block_sets_the_environment(prefect_api, monkeypatch):
    from prefect.blocks.system import Secret

    for name in credentials.ENV.values():
        monkeypatch.delenv(name, raising=False)
    Secret(value={"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s3cr3t-xyz",
                  "endpoint_url": "http://127.0.0.1:9"}).save("creds-ok", overwrite=True)
    names = credentials.apply_block("secret/creds-ok")
    assert sorted(names) == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-xyz"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert "AWS_SESSION_TOKEN" not in os.environ


def test_incomplete_or_missing_blocks_are_named_without_their_values(prefect_api, monkeypatch):
    from prefect.blocks.system import Secret

    for name in credentials.ENV.values():
        monkeypatch.delenv(name, raising=False)
    Secret(value={"aws_secret_access_key": "s3cr3t-only"}).save("creds-half", overwrite=True)
    Secret(value="just-a-string").save("creds-text", overwrite=True)
    with pytest.raises(ConfigError, match="lacks aws_access_key_id") as half:
        credentials.apply_block("secret/creds-half")
    assert "s3cr3t-only" not in str(half.value)
    with pytest.raises(ConfigError, match="JSON object") as text:
        credentials.apply_block("secret/creds-text")
    assert "just-a-string" not in str(text.value)
    with pytest.raises(ConfigError, match="could not be loaded"):
        credentials.apply_block("secret/no-such-block")
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
