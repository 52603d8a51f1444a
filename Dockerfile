# Berth's container image: `docker build -t berth:local .`
#
# The build stage compiles the `berth` binary (package `berth`, crates/cli) from the
# workspace; the runtime stage is Debian slim with CA certificates (S3, GCS, Azure, LDAPS
# and OIDC endpoints are reached over TLS) and an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts (BuildKit) keep downloaded crates and compiled dependencies between
# builds; the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p berth \
 && install -m 0755 target/release/berth /usr/local/bin/berth

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/berth --shell /usr/sbin/nologin berth \
 && mkdir -p /etc/berth /var/lib/berth \
 && chown berth:berth /var/lib/berth \
 && printf '%s\n' \
      '# Defaults of the image; REGISTRY_* variables override any key, or mount your own file here.' \
      'version: 0.1' \
      'http:' \
      '  addr: ":5000"' \
      'storage:' \
      '  filesystem:' \
      '    rootdirectory: /var/lib/berth' \
      > /etc/berth/config.yml
COPY --from=build /usr/local/bin/berth /usr/local/bin/berth
USER berth
WORKDIR /var/lib/berth
# Blobs and upload spools (filesystem storage) and the SQLite database live here; with an
# object store and PostgreSQL nothing is written here.
VOLUME /var/lib/berth
EXPOSE 5000
# Listening on :5000 needs authentication configured (auth.htpasswd, berth.auth.token,
# ...) or --allow-unauthenticated: Berth refuses to start otherwise.
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve", "/etc/berth/config.yml"]
