# The API image: the API, migrations and the `rlprune` command line, without the worker's ML stack (no
# torch), as a non-root user. The worker image is Dockerfile.gpu. Both bases are build arguments so a site
# can build from its own mirror.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
FROM ${UV_IMAGE} AS uv

FROM ${BASE_IMAGE}
# uv trusts only its bundled roots unless SSL_CERT_FILE points at the system's (a proxy with its own CA).
ENV PYTHONUNBUFFERED=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# uv is only needed to install: it is mounted from its stage for these two steps and never copied in, and
# --no-cache keeps its download cache out of the layers.
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    uv sync --frozen --no-dev --extra s3 --no-install-project --no-cache
COPY alembic.ini ./
COPY migrations ./migrations
COPY rlprune_core ./rlprune_core
COPY rlprune_client ./rlprune_client
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY service ./service
COPY examples ./examples
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    uv sync --frozen --no-dev --extra s3 --no-cache

# the named volumes mounted here take this ownership when first created: the same user as the worker image
RUN useradd --create-home --uid 10001 rlprune && mkdir -p /data/jobs /data/datasets /data/uploads && chown -R rlprune /data
USER rlprune
ENV PATH=/opt/venv/bin:$PATH RLPRUNE_DATA_DIR=/data
EXPOSE 8000
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
