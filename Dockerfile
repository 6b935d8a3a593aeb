# falgate: multi-stage build, small non-root runtime image.
#   podman build -t falgate .        (or docker build)
#   podman run -p 8080:8080 -e FAL_KEY -e FALGATE_AUTH__HS256_SECRET falgate
# BASE lets an offline build use a local Debian image (e.g. one made with debootstrap).
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin falgate

FROM ${BASE}
# TLS roots are compiled into the binary (rustls + webpki roots); nothing else is needed.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin falgate
COPY --from=build /src/target/release/falgate /usr/local/bin/falgate
COPY config/ /etc/falgate/
ENV FALGATE_CONFIG=/etc/falgate/falgate.toml \
    FALGATE_LISTEN=0.0.0.0:8080 \
    FALGATE_ADMIN_LISTEN=0.0.0.0:9090 \
    FALGATE_LOG__FORMAT=json
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/falgate"]
CMD ["serve"]
