# CI stand-in for postgres:16 (no registry is reachable in CI): Debian bookworm's
# PostgreSQL 15 with an entrypoint that honours the official image's POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB and its data folder. Users' stacks run postgres:16.
FROM local/debian:bookworm
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
