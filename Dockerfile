# The background-processing image: ./create_docker-image.sh builds and tags
# it; build.yaml runs it. Two stages:
#
#   builder  the official Rust image; dependencies are built in a layer of
#            their own that changes only with Cargo.toml and Cargo.lock, so
#            editing src/ rebuilds the service alone. Both builds run
#            scripts/build-release, the very command CI runs (.ci/run).
#   runtime  Debian slim (the builder's own release, so glibc matches) with
#            the binary and nothing else: no shell tools are installed, no
#            secrets are baked in (DATABASE_URL comes from the environment),
#            and it runs as a numeric non-root user.
#
# The binary is the entrypoint and PID 1: it handles SIGTERM and SIGINT
# itself (graceful drain, SHUTDOWN_TIMEOUT), so no shell or init wrapper.

FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependencies: a stub crate with the real manifest and lock file. The
# manifest names test and bench targets the release build does not compile
# but cargo wants to find, so their stubs stay.
COPY Cargo.toml Cargo.lock ./
COPY scripts/build-release scripts/build-release
RUN mkdir -p src tests/integration benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/integration/main.rs \
    && echo 'fn main() {}' > benches/pipeline.rs \
    && echo 'fn main() {}' > benches/end_to_end.rs \
    && scripts/build-release \
    && rm -rf src \
        target/release/.fingerprint/background-processing-* \
        target/release/deps/background_processing-* \
        target/release/deps/libbackground_processing-* \
        target/release/background-processing

# The service (schema.sql, the dashboard's templates and its stylesheet and
# script are embedded in the binary).
COPY schema.sql ./
COPY templates templates
COPY static static
COPY src src
RUN scripts/build-release \
    && target/release/background-processing --version

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 background-processing \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin background-processing
COPY --from=builder /build/target/release/background-processing /usr/local/bin/background-processing
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
# /healthz, /readyz and /metrics (METRICS_ADDR); the dashboard's pages
# (DASHBOARD_ADDR, when run as `dashboard`).
EXPOSE 9090 8080
ENTRYPOINT ["/usr/local/bin/background-processing"]
CMD ["run"]
