# syntax=docker/dockerfile:1
# The realtime node as a small container image: a Rust build stage, then a distroless runtime
# stage (glibc and libgcc only: no shell, no package manager) running as a non-root user.
#
#   docker build -t realtime .
#   docker run --rm -p 4000:4000 -e DB_HOST=... -e DB_ENC_KEY=... realtime
#
# README.md ("Deployment") lists the variables; docker-compose.cluster.yml runs three of these.

# The toolchain CI uses (rust-version in Cargo.toml is the oldest that builds).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# scripts/test builds the server with `cargo build --bin realtime`; the image takes the same
# command in release mode with the committed Cargo.lock. The release profile keeps line tables
# for profiling (debug = 1); the image drops them.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin realtime \
    && objcopy --strip-debug target/release/realtime /realtime

# Same Debian release as the build stage, so the glibc the binary links against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /realtime /usr/local/bin/realtime
# HTTP and WebSocket; gossip and the inter-node bus are UDP (clustered nodes only).
EXPOSE 4000/tcp 7946/udp 7947/udp
# distroless' nonroot user, by number (uid and gid 65532): the node writes nothing to disk.
USER 65532:65532
# No curl or shell in the image: the binary's own client of GET /healthcheck (src/probe.rs),
# reading PORT and BIND_ADDR like the server.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/realtime", "healthcheck"]
# SIGTERM (docker stop, Kubernetes) runs the node's ordered shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/realtime"]
