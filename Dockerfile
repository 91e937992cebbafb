# syntax=docker/dockerfile:1
#
# kube-event-agent: the supervisor (PID 1) and its worker processes, nothing else.
#
#   docker build -t kube-event-agent:0.1.0 .
#   docker run --rm -e DD_API_KEY=... -v ~/.kube/config:/kube/config:ro \
#       -e DD_KUBERNETES_KUBECONFIG_PATH=/kube/config kube-event-agent:0.1.0
#
# Stage 1 builds wheels for the agent and every dependency (all of them ship binary wheels
# for manylinux, so no compiler is needed or installed). Stage 2 installs only those wheels
# (--no-index: nothing else can sneak in) into a venv that has no pip of its own; the wheels
# are bind-mounted for that one RUN, so no wheel, pip cache or build tool ends up in a layer.
# Runtime dependencies only: kubesim's (aiohttp, ...) and the test tools are extras
# ([sim], [test]) and are not installed. tests/test_dockerfile.py runs the same pip steps in
# a fresh venv and checks this file's properties (no Docker engine needed).
#
# No init process (tini, dumb-init): the supervisor is written to be PID 1. It reaps every
# zombie (SIGCHLD), forwards SIGTERM to its workers and hands the leader lock over before
# it exits (see supervisor/pid1.py and supervisor/agent.py).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README/LICENSE and the packages.
COPY . .
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
# VERSION must be pyproject.toml's version: the install below pins it (a mismatch fails the
# build instead of labelling one version with another).
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kube-event-agent" \
      org.opencontainers.image.description="Leader-elected Kubernetes event and control-plane collector that forwards to Datadog" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# Read-only root filesystem in Kubernetes: no .pyc writes (they are compiled at install),
# and multiprocessing's fork server keeps its socket under TMPDIR (an emptyDir there).
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        --find-links=/wheels "kube-event-agent==${VERSION}" \
    && groupadd --system --gid 10001 agent \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin agent

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /

EXPOSE 5555

# For `docker run`; Kubernetes ignores HEALTHCHECK and uses the probes in manifests/.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["kube-event-agent", "health"]

ENTRYPOINT ["kube-event-agent", "run"]
