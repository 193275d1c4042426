# syntax=docker/dockerfile:1
# weir's container image: a Rust build stage, then a small Debian runtime as a non-root user.
#
#   docker build -t weir .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 weir
#
# The image serves config/weir.yaml (the built-in `mock` model, no client keys) on 0.0.0.0:8080,
# admin (/healthz /readyz /metrics) on 0.0.0.0:9090. Mount your own config over
# /etc/weir/weir.yaml, or at another path with `serve --config PATH`.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# jemalloc's build script needs make; ring's needs a C compiler (in the image already).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The README's build command. The cache mounts keep crates and compiled dependencies between
# builds; the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin weir \
 && install -D -m 0755 target/release/weir /out/weir \
 && ./target/release/weir check --config config/weir.yaml

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: the platform roots for https backends (weir falls back to bundled roots).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 weir \
 && useradd --system --uid 65532 --gid weir --home-dir /var/lib/weir --shell /usr/sbin/nologin weir \
 && install -d -o weir -g weir /var/lib/weir /var/lib/weir/data
COPY --from=build /out/weir /usr/local/bin/weir
COPY config/weir.yaml /etc/weir/weir.yaml
# Listen on every interface inside the container; config/weir.yaml reads these.
ENV WEIR_LISTEN=0.0.0.0:8080 \
    WEIR_ADMIN_LISTEN=0.0.0.0:9090 \
    RUST_LOG=info
# Relative paths in a config (datasets' `dir`) resolve here.
WORKDIR /var/lib/weir
USER 65532:65532
EXPOSE 8080 9090
# No curl in the image: bash's /dev/tcp asks /healthz on the admin port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WEIR_ADMIN_LISTEN##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
# SIGTERM drains in-flight requests for server.shutdown_timeout, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["serve", "--config", "/etc/weir/weir.yaml", "--log-format", "json"]
