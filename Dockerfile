# Herald's container image: built in a Rust image, run from a small Debian one as a non-root
# user, with a HEALTHCHECK on /health.
#
#   podman build --format docker -t herald .   (or docker build; compiles from source;
#                                               --format docker keeps the HEALTHCHECK)
#   podman run -p 6001:6001 -v herald-history:/var/lib/herald herald
#
# CI packs a binary it already built, from a base image it made with debootstrap (no
# container registry is reachable there):
#   podman build --format docker --build-arg SOURCE=prebuilt --build-arg BINARY=target/debug/herald \
#     --build-arg RUNTIME_IMAGE=localhost/herald-base:bookworm -t herald .
ARG RUST_IMAGE=docker.io/library/rust:1-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
# `build` compiles here; `prebuilt` takes BINARY from the build context.
ARG SOURCE=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p herald-server --bin herald \
    && install -m 0755 target/release/herald /herald

FROM scratch AS prebuilt
ARG BINARY=target/release/herald
COPY ${BINARY} /herald

FROM ${SOURCE} AS binary

FROM ${RUNTIME_IMAGE}
RUN groupadd --gid 10001 herald \
    && useradd --no-create-home --uid 10001 --gid herald --home-dir /var/lib/herald --shell /usr/sbin/nologin herald \
    && install -d -o herald -g herald -m 0700 /var/lib/herald /var/lib/herald/history \
    && install -d -m 0755 /etc/herald
COPY --from=binary /herald /usr/bin/herald
COPY dist/herald.toml /etc/herald/herald.toml
# The admin listener must be reachable by the orchestrator's probes; keep port 9601 off any
# public network.
ENV HERALD_ADMIN__LISTEN=0.0.0.0:9601
USER herald
WORKDIR /var/lib/herald
VOLUME ["/var/lib/herald"]
EXPOSE 6001 9601
STOPSIGNAL SIGTERM
# bash's /dev/tcp: no HTTP client needs to be in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9601 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/bin/herald"]
CMD ["serve", "--config", "/etc/herald/herald.toml"]
