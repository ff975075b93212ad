# syntax=docker/dockerfile:1
# pgrouter: a release build in a Rust image, run from a small Debian image as
# a non-root user. docker-compose.yml builds it; on its own:
#   docker build -t pgrouter .
#   docker run -v "$PWD/my.toml:/etc/pgrouter/pgrouter.toml:ro" -p 6432:6432 pgrouter

FROM rust:1-slim-bookworm AS build
WORKDIR /usr/src/pgrouter
# benches/ too: Cargo.toml names a bench target, and cargo refuses a manifest
# whose targets are missing.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The cache mounts keep the registry and compiled dependencies between builds,
# so a change to src/ rebuilds pgrouter alone; the binary is copied out of the
# cached target/ because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/src/pgrouter/target \
    cargo build --release --locked --bin pgrouter \
    && cp target/release/pgrouter /usr/local/bin/pgrouter

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 pgrouter \
    && useradd --system --uid 10001 --gid pgrouter --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgrouter
COPY --from=build /usr/local/bin/pgrouter /usr/local/bin/pgrouter
# A default so that the image runs on its own; compose mounts the same file
# over it, so an edit needs no rebuild.
COPY config/pgrouter.docker.toml /etc/pgrouter/pgrouter.toml
USER pgrouter
# 6432: PostgreSQL clients; 9187: Prometheus /metrics (server.metrics_listen).
EXPOSE 6432 9187
ENTRYPOINT ["pgrouter", "--config", "/etc/pgrouter/pgrouter.toml"]
