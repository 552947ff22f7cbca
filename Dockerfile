# The qldbstream KCL worker: the KCL MultiLangDaemon (Java 17) with qldbstream's record processor.
#
#   docker build -t qldbstream-kcl .                                  # with qldbstream-native (Rust, built here)
#   docker build -t qldbstream-kcl --build-arg WITH_NATIVE=0 .        # pure Python (smaller build, ~10x slower)
#   docker run --init -e QLDBSTREAM_STREAM_NAME=... -e QLDBSTREAM_REGION=... \
#              -e QLDBSTREAM_DEDUPE_STORE=dynamodb:... -e QLDBSTREAM_DLQ=sqs:https://... qldbstream-kcl
#
# Every install step is deploy/kcl/image-setup.sh, which CI runs against a scratch directory; this file
# itself is not built in CI (no Docker engine there). See docs/kcl.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: Maven resolves the daemon's jars, pip installs qldbstream + handlers (+ native) ----------------
FROM ${PYTHON_IMAGE} AS build
# The image ships the compiled hot path by default; image-setup.sh fails the build if it cannot build it.
ARG WITH_NATIVE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven ca-certificates curl \
 && if [ "$WITH_NATIVE" = 1 ]; then \
      apt-get install -y --no-install-recommends build-essential \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; \
    fi \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN MAVEN_REPO=/tmp/m2 WITH_NATIVE=$WITH_NATIVE deploy/kcl/image-setup.sh /opt/qldbstream

# --- runtime: a JRE, the venv and the jars; no Maven, no sources -------------------------------------------
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /home/qldbstream --create-home qldbstream
COPY --from=build /opt/qldbstream /opt/qldbstream
ENV PATH=/opt/qldbstream/venv/bin:$PATH \
    KCL_JAR_DIR=/opt/qldbstream/jars \
    PYTHONUNBUFFERED=1 \
    QLDBSTREAM_LOG_FORMAT=json
USER qldbstream
WORKDIR /home/qldbstream
# `qldbstream kcl` forwards SIGTERM to the daemon (processors checkpoint, then it exits) and, as PID 1,
# reaps orphaned processes; `docker run --init` (ECS: initProcessEnabled) adds a real init as well.
# Give `docker stop` more than shutdownGraceMillis (5 s): --time 30.
ENTRYPOINT ["qldbstream", "kcl"]
