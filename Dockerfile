# falgate: multi-stage build, small non-root runtime image.
#   docker build -t falgate .        (or podman build --format docker, which keeps HEALTHCHECK)
#   docker run -p 8080:8080 -e FAL_KEY -e FALGATE_AUTH__HS256_SECRET falgate
#
# Build arguments (all optional):
#   RUST_VERSION  the builder's Rust; keep it equal to `rust-version` in Cargo.toml
#                 (scripts/validate-deploy checks that).
#   RUST_IMAGE    the builder image, e.g. a mirror's copy for offline builds.
#   BASE          the runtime base, e.g. a local Debian image made with debootstrap.
#   BIN_FROM      an image holding a prebuilt /usr/local/bin/falgate, to skip the Rust stage
#                 (scripts/image can use it: base images cannot be pulled on its machine).
# podman 4 / buildah: add --skip-unused-stages=false when building the Rust stage (buildah
# decides which stages are used before it expands `FROM ${BIN_FROM}`); scripts/image does.
ARG RUST_VERSION=1.89
ARG RUST_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
ARG BASE=docker.io/library/debian:bookworm-slim
ARG BIN_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependency-cache layer: compile every dependency from the manifest and the lock alone, with
# empty stand-ins for falgate's own targets; rebuilt only when Cargo.toml, Cargo.lock or the
# cargo config change. The cargo config comes first: its CFLAGS build mimalloc (a dependency)
# the way BENCHMARKS.md measured it.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/config.toml .cargo/config.toml
COPY scripts/cargo-stubs scripts/cargo-stubs
RUN sh scripts/cargo-stubs \
    && cargo build --release --locked --bin falgate \
    && rm -rf src target/release/falgate target/release/.fingerprint/falgate-* \
        target/release/deps/falgate-* target/release/deps/libfalgate-*
# falgate itself: build.rs (the compiler version in falgate_build_info), src, and config/
# (src/dev.rs embeds it for `falgate dev`). scripts/validate-deploy compiles exactly this file
# set, so a file the crate needs and this stage forgets fails CI.
COPY build.rs ./
COPY src src
COPY config config
RUN cargo build --release --locked --bin falgate \
    && install -m 0755 target/release/falgate /usr/local/bin/falgate

# The binary, from the Rust stage above or from BIN_FROM.
FROM ${BIN_FROM} AS bin

FROM ${BASE}
# TLS roots are compiled into the binary (rustls + webpki roots); nothing else is needed.
RUN useradd --no-log-init --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin falgate
COPY --from=bin /usr/local/bin/falgate /usr/local/bin/falgate
COPY config/ /etc/falgate/
# The admin listener (/metrics) stays on loopback unless a deployment opens it on purpose
# (the Kubernetes manifest sets FALGATE_ADMIN_LISTEN=0.0.0.0:9090 behind a NetworkPolicy).
ENV FALGATE_CONFIG=/etc/falgate/falgate.toml \
    FALGATE_LISTEN=0.0.0.0:8080 \
    FALGATE_ADMIN_LISTEN=127.0.0.1:9090 \
    FALGATE_LOG__FORMAT=json
USER 10001:10001
EXPOSE 8080
# SIGTERM drains: /readyz answers 503 at once, calls keep being served for drain.delay, then
# in-flight work finishes up to drain.timeout. Give the container more than their sum to stop.
STOPSIGNAL SIGTERM
# The image has no curl: bash's /dev/tcp sends GET /healthz to the public listener's port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FALGATE_LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/falgate"]
CMD ["serve"]
