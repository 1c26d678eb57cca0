# syntax=docker/dockerfile:1.7
#
# One image recipe for every binary of the workspace. Pick the binary with a build arg:
#
#   docker build --build-arg SERVICE=cart-service --build-arg PORT=8082 -t shop/cart-service .
#
# SERVICE: product-service | cart-service | credit-card-authorizer | warehouse | gateway
# PORT:    the port the binary listens on inside the container (EXPOSE + HEALTHCHECK use it).
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (dependencies
# cooked in their own cached layer, then the workspace) -> runtime (distroless, non-root).
#
# The product and warehouse binaries carry their SQL migrations (services/<svc>/migrations, compiled
# in by sqlx::migrate! in the builder's `COPY . .`) and apply them at start when DATABASE_URL is
# set; the runtime image needs no migration files and no database at build time.

# Must be >= every rust-version in Cargo.lock (uuid 1.29 needs 1.89); 1.95 is the toolchain the
# workspace is built and tested with. scripts/check-infra.sh checks this.
ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
# The workspace uses rustls only (no OpenSSL), so no -dev packages are needed.
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
    && rm -rf "${CARGO_HOME}/registry"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependency layer: only invalidated when Cargo.toml/Cargo.lock change, not on source edits.
# It cooks the whole workspace's dependencies and comes before ARG SERVICE, so the images of all
# binaries share this one layer.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
ARG SERVICE=product-service
RUN cargo build --release --locked --bin "${SERVICE}" \
    && install -D -m 0755 "target/release/${SERVICE}" /out/service

# distroless/cc: glibc, libgcc, CA certificates (needed for amqps:// to Amazon MQ), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG SERVICE=product-service
ARG PORT=8081
LABEL org.opencontainers.image.title="${SERVICE}" \
      org.opencontainers.image.description="Distributed e-commerce reference system: ${SERVICE}"
ENV SERVICE_NAME="${SERVICE}" \
    PORT="${PORT}" \
    RUST_LOG="info" \
    LOG_FORMAT="json" \
    QUEUE_TYPE="classic"
COPY --from=builder /out/service /usr/local/bin/service
USER 65532:65532
EXPOSE ${PORT}
# Every binary answers `<binary> healthcheck` by GETting http://127.0.0.1:$PORT/health: no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/service", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/service"]
