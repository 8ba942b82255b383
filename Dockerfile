# Multi-stage build: compile in the Rust image, run from a small Debian image as a non-root
# user. The config is read from /etc/session-proxy/proxy.toml (mount yours there, or pass
# --config); secrets come from the environment (${SESSION_SECRET}, ${SESSION_STORE_URL}).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY vendor ./vendor
RUN cargo build --release --locked --bin session-proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin proxy \
 && mkdir -p /etc/session-proxy
COPY --from=build /src/target/release/session-proxy /usr/local/bin/session-proxy
COPY docker/proxy.toml /etc/session-proxy/proxy.toml
USER proxy
# 8080: the proxy; docker/proxy.toml (the default config) takes SESSION_SECRET, UPSTREAM and SESSION_STORE_URL from the environment;
# 9901: the admin listener (/healthz, /readyz, /metrics).
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/session-proxy"]
CMD ["--config", "/etc/session-proxy/proxy.toml"]
