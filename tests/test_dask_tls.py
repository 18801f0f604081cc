"""Dask across hosts with TLS, as docker/README.md documents it.

A ``dask scheduler`` and a GPU ``dask worker`` that require mutual TLS (a test CA and a
certificate per role); a client without a certificate is refused, and the flow connects
with ``--cluster tls://...`` and Dask's configuration from the environment alone.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from boards import cnn_rows
from daskutil import ROOT, dask_processes

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.cluster]
ROLES = ("scheduler", "worker", "client")


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA (``ca``) and, signed by it, ``<role>.pem`` + ``<role>.key`` for each role."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: x509.Name, signer, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "covid-pipeline test CA")])
    ca = certificate("covid-pipeline test CA", ca_key, ca_name, ca_key, ca=True)
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(role, key, ca_name, ca_key, ca=False)
        paths[f"{role}.pem"] = folder / f"{role}.pem"
        paths[f"{role}.key"] = folder / f"{role}.key"
        paths[f"{role}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{role}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_cluster(prefect_api, tmp_path) -> Iterator[tuple[str, dict[str, Path]]]:
    """(scheduler address, certificate paths) of a cluster that requires mutual TLS."""
    from distributed.security import Security

    certs = make_certs(tmp_path / "certs")

    def tls(role: str) -> list[str]:
        return ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs[f"{role}.pem"]),
                "--tls-key", str(certs[f"{role}.key"])]

    client = Security(tls_ca_file=str(certs["ca"]), tls_client_cert=str(certs["client.pem"]),
                      tls_client_key=str(certs["client.key"]), require_encryption=True)
    with dask_processes([["--resources", "GPU=1", *tls("worker")]], protocol="tls",
                        scheduler_args=tuple(tls("scheduler")),
                        client_options={"security": client}) as address:
        yield address, certs


async def identity(address: str, **connection_args) -> str:
    """The peer's type after a Dask handshake and an ``identity`` call, or why it failed."""
    from distributed.comm import connect

    try:
        comm = await connect(address, timeout=10, **connection_args)
        await comm.write({"op": "identity"})
        reply = await comm.read()
        await comm.close()
        return reply["type"]
    except OSError as exc:  # CommClosedError and the TLS alerts behind it
        return f"refused: {exc}"


def test_flow_runs_on_a_tls_cluster_that_refuses_clients_without_a_certificate(
        tls_cluster, synth_root, tmp_path):
    from distributed.security import Security

    address, certs = tls_cluster
    foreign = make_certs(tmp_path / "foreign")  # same role names, another CA

    def context(cert: dict[str, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        ctx.check_hostname = False
        if cert:
            ctx.load_cert_chain(str(cert["client.pem"]), str(cert["client.key"]))
        return ctx

    ours = Security(tls_ca_file=str(certs["ca"]), tls_client_cert=str(certs["client.pem"]),
                    tls_client_key=str(certs["client.key"]), require_encryption=True)
    assert asyncio.run(identity(address, **ours.get_connection_args("client"))) == "Scheduler"
    for name, args in [("no certificate", {"ssl_context": context(None)}),
                       ("another CA's certificate", {"ssl_context": context(foreign)})]:
        assert asyncio.run(identity(address, **args)).startswith("refused: "), name
    assert asyncio.run(identity(address.replace("tls://", "tcp://"))).startswith("refused: ")

    env = {**os.environ,
           "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs["ca"]),
           "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(certs["client.pem"]),
           "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(certs["client.key"]),
           "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "true"}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke",
         "--models", "VGG16", "--folds", "2", "--epochs", "1", "--input-size", "32",
         "--weights", "none", "--cluster", address, "--out", str(out),
         "--source", f"ieee8023={synth_root / 'ieee8023'}",
         "--source", f"rsna={synth_root / 'rsna'}"],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    board = cnn_rows(pd.read_csv(out / "leaderboard.csv"))
    assert list(board["model"]) == ["VGG16"] and list(board["status"]) == ["ok"]
    assert (board["n_folds"] == 2).all()
