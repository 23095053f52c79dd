# One small image per service:
#   docker build --build-arg SERVICE=order -t ordermesh/order:0.1.0 .
# (SERVICE: order, inventory, payment, shipping or notification). Dependencies are compiled in
# their own layer (cargo-chef), so a code change rebuilds only the workspace's crates. Each image
# also carries the `ordermesh` CLI for operators (`kubectl exec deploy/order -- ordermesh check`).
# The base images are build arguments, for a mirror or a pinned digest:
#   --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...
# Without a registry, `make image` builds the same runtime stage (images/runtime.Containerfile)
# from binaries built on the host, on a base assembled locally (scripts/image.sh).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --workspace --bins

# distroless: glibc and CA certificates, no shell, no package manager; runs as 65532 (nonroot),
# matching the manifests' securityContext, with a read-only root filesystem.
FROM ${RUNTIME_IMAGE}
ARG SERVICE
LABEL org.opencontainers.image.title="ordermesh-${SERVICE}"
COPY --from=builder /src/target/release/ordermesh-${SERVICE} /usr/local/bin/service
COPY --from=builder /src/target/release/ordermesh /usr/local/bin/ordermesh
USER 65532:65532
EXPOSE 50051 8080
ENV ORDERMESH_GRPC_ADDR=0.0.0.0:50051 ORDERMESH_ADMIN_ADDR=0.0.0.0:8080
ENTRYPOINT ["/usr/local/bin/service"]
