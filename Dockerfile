# syntax=docker/dockerfile:1
#
# One image holding all three taskgate binaries (auth-service, task-service, gateway);
# docker-compose.yml picks which one a container runs with `command:`.
#
# Needs BuildKit for the cache mounts (the default builder since Docker 23; with the
# old Python docker-compose set DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1).
# No protoc is needed: taskgate-proto compiles proto/ with protox, in Rust.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cargo's registry and the target folder live in cache mounts, so a rebuild after a
# source change recompiles only our crates, not every dependency. The binaries are
# copied out of the cache mount within the same step, since it is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p auth-service -p task-service -p gateway \
    && mkdir -p /out \
    && cp target/release/auth-service target/release/task-service target/release/gateway /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin taskgate
COPY --from=builder /out/ /usr/local/bin/
USER taskgate
# auth-service, task-service, gateway.
EXPOSE 50051 50052 8080
CMD ["gateway"]
