# sluice in a container: a release build of the one binary on a slim Debian base.
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (cmake is not needed for its default build).
RUN apt-get update && apt-get install -y --no-install-recommends build-essential python3 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/sluice --create-home sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER sluice
WORKDIR /var/lib/sluice
ENTRYPOINT ["sluice"]
CMD ["run", "/etc/sluice/sluice.yaml"]
