# CI stand-in for python:3.11-slim-bookworm (no registry is reachable in CI): Debian
# bookworm's own Python 3.11 on the locally built Debian base. It also trusts the CA
# certificates of the machine that builds it (copied into the build context by
# docker/ci/stack.sh, never committed), so that pip reaches PyPI through that machine's
# network. Users' images start from the real upstream image.
FROM local/debian:bookworm
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv python3-pip python-is-python3 ca-certificates \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DEFAULT_TIMEOUT=180 \
    LANG=C.UTF-8
CMD ["python3"]
