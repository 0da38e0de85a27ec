# syntax=docker/dockerfile:1
#
# vramfit's image: the one binary (`vramfit serve | agent | device-plugin | place | probe | replay`) on
# distroless/cc (glibc, no shell, uid 65532). Build and push, then point the `images:` entry
# `vramfit` in manifests/kustomization.yaml at it:
#
#   docker build -t registry.example.com/vramfit:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/vramfit:0.1.0 --push .
#
# (arm64 for Ascend/Kunpeng nodes.) Pin both base images by digest in production.

# Build stage: the Rust toolchain the project is built and tested with (Cargo.toml's
# rust-version, 1.89, is the minimum). Debian bookworm, the same glibc (2.36) as the runtime.
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vramfit \
 && install -D -m 0755 target/release/vramfit /out/vramfit

# Runtime: glibc and libgcc for the binary (and for libnvidia-ml.so.1, which the NVIDIA
# container runtime injects into the agent at run time), no shell, non-root (65532:65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vramfit /usr/local/bin/vramfit
USER 65532:65532
EXPOSE 8888
ENTRYPOINT ["/usr/local/bin/vramfit"]
CMD ["--help"]
