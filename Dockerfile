# syntax=docker/dockerfile:1
# One image for every zai-proxy service; the command picks it:
#   docker run IMAGE proxy | limiter | collector | dashboard | migrate
# Stages: the web UI built with Node, the package installed into a virtualenv with the
# pinned versions (constraints.txt), and a slim runtime that runs as a non-root user and
# needs no writable root filesystem (only /tmp, and /data for the SQLite default).

ARG NODE_IMAGE=node:20-bookworm-slim
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- web UI: `npm run build` writes ../services/dashboard-api/static/ -------------------
FROM ${NODE_IMAGE} AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# --- Python package into /opt/zai-proxy ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/zai-proxy
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY services/ services/
COPY --from=web /src/services/dashboard-api/static/ services/dashboard-api/static/
# The UI must be in the package; bytecode is compiled now, since the running container
# cannot write __pycache__ (read-only root filesystem). The otel extra (OpenTelemetry's
# SDK and OTLP exporters) is installed: it costs nothing until OTEL_EXPORTER_OTLP_ENDPOINT
# is set.
RUN /opt/zai-proxy/bin/pip install -c constraints.txt '.[otel]' \
    && /opt/zai-proxy/bin/python -c "import importlib.resources as r; \
assert (r.files('zai_proxy.dashboard_api') / 'static' / 'index.html').is_file(), 'no web UI'" \
    && /opt/zai-proxy/bin/python -m compileall -q /opt/zai-proxy/lib

# --- runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" zai \
    && useradd --system --uid "${UID}" --gid zai --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin zai \
    && mkdir -p /data \
    && chown zai:zai /data
COPY --from=build /opt/zai-proxy /opt/zai-proxy
ENV PATH=/opt/zai-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    DATABASE_URL=sqlite+aiosqlite:////data/zai-proxy.db
WORKDIR /data
USER ${UID}:${UID}
# proxy, limiter, collector, dashboard
EXPOSE 8080 8090 8091 3000
ENTRYPOINT ["zai-proxy"]
CMD ["proxy"]
