# CI stand-in for MinIO (no registry is reachable in CI): moto's S3 server, which accepts
# any key, on port 9000; the same image creates the bucket in place of minio-init.
FROM python:3.11-slim-bookworm
ARG MOTO_VERSION
ARG BOTO3_VERSION
RUN python -m venv /opt/moto \
    && /opt/moto/bin/pip install -q "moto[server]==${MOTO_VERSION}" "boto3==${BOTO3_VERSION}"
ENV PATH=/opt/moto/bin:$PATH
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
