# syntax=docker/dockerfile:1.7
# One image for all eight services: `parapet serve <service>`, the service named by the container's args
# (Kubernetes `args: ["auth"]`, compose `command: ["auth"]`). See docs/deploy.md.
#
# Both stages use the same base image, so the virtualenv's interpreter path (/usr/local/bin/python3.11)
# exists in the final stage. Pin it by digest in your registry mirror for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: resolve the locked dependencies and install the project into /opt/venv -------------------
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
# Then the project itself (libs/, services/, prompts/: .dockerignore admits nothing else), as a regular
# non-editable install, so /src is not needed at run time. prompts/ may be empty, and git keeps no empty
# folders, hence the mkdir.
COPY . .
RUN uv sync --frozen --no-dev --no-editable \
 && mkdir -p prompts

# --- runtime: the interpreter, the virtualenv and nothing that builds -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="parapet" \
      org.opencontainers.image.description="Parapet: governed AI gateway (gRPC microservices)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without looking up names.
# /var/lib/parapet/identity is owned by it so a fresh Docker volume mounted there is writable (compose).
RUN groupadd --system --gid 10001 parapet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/parapet --create-home --shell /usr/sbin/nologin parapet \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/parapet /var/lib/parapet/identity
COPY --from=builder /opt/venv /opt/venv
# Versioned prompt templates are data, not code: they live beside the working directory.
COPY --from=builder /src/prompts /opt/parapet/prompts
WORKDIR /opt/parapet
# Read-only root filesystem: nothing writes .pyc files (compiled at build time), HOME and /tmp are
# emptyDir volumes in Kubernetes. The process listens on every interface, one port per container.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/parapet \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARAPET_HOST=0.0.0.0 \
    PARAPET_PORT=8080 \
    PARAPET_LOG_FORMAT=json
USER 10001:10001
# grpc: the service; metrics: Prometheus (reserved, served by a later issue).
EXPOSE 8080 9090
# The server drains on SIGTERM (PARAPET_SHUTDOWN_GRACE_SECONDS) and is PID 1 with its own handlers.
STOPSIGNAL SIGTERM
ENTRYPOINT ["parapet", "serve"]
# No default service: without an argument the image prints the valid service names.
CMD ["--help"]
