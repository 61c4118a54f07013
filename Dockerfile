# syntax=docker/dockerfile:1
#
# One image, both binaries: `flashsale-api` (the default command) and `flashsale-worker`
# (compose/docker-compose.yml picks the command per service).
#
#   docker build -t flashsale:local .
#   docker run --rm -e REDIS_URL=redis://host:6379 -e ADMIN_TOKEN=... -p 8080:8080 flashsale:local
#   docker run --rm -e REDIS_URL=redis://host:6379 -e DATABASE_URL=postgres://user:pw@host:5432/flashsale \
#     flashsale:local flashsale-worker      # the worker requires the ledger (PostgreSQL)

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm
# Which commit this is: recorded in the binaries (flashsale_build_info) and the labels.
ARG FLASHSALE_REVISION=unknown
ARG FLASHSALE_VERSION=dev

# ---- build ----------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG FLASHSALE_REVISION
ENV FLASHSALE_REVISION=${FLASHSALE_REVISION}
WORKDIR /src
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds (BuildKit), so
# a source change rebuilds only the workspace crates. target/ lives in the cache, hence
# the copy out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/flashsale-api target/release/flashsale-worker /out/

# ---- runtime --------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG FLASHSALE_REVISION
ARG FLASHSALE_VERSION
LABEL org.opencontainers.image.title="flashsale" \
      org.opencontainers.image.description="Flash sales without overselling: gateway and worker" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${FLASHSALE_VERSION}" \
      org.opencontainers.image.revision="${FLASHSALE_REVISION}"
# curl for the health check only; nothing else is needed at run time (no TLS: Redis and
# the load balancer are on the private network).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flashsale \
    && useradd --system --uid 10001 --gid flashsale --no-create-home --shell /usr/sbin/nologin flashsale
COPY --from=build /out/flashsale-api /out/flashsale-worker /usr/local/bin/

# Listen on every interface inside the container; logs as JSON for the log shipper.
ENV LISTEN_ADDR=0.0.0.0:8080 \
    METRICS_ADDR=0.0.0.0:9091 \
    LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080 9091
USER 10001:10001

# Liveness of whichever binary runs: the gateway answers /healthz on LISTEN_ADDR, the
# worker on METRICS_ADDR, and nothing else listens in the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:${LISTEN_ADDR##*:}/healthz || curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:${METRICS_ADDR##*:}/healthz"]

# Both binaries stop gracefully on SIGTERM (the gateway drains for SHUTDOWN_TIMEOUT_MS).
STOPSIGNAL SIGTERM
CMD ["flashsale-api"]
