# syntax=docker/dockerfile:1
#
# pgcloak container image: pgcloak, and pgcloak-kms (the AWS KMS emulator
# docker-compose.yml runs as its kms service; not for real data).
#
#   docker build -t pgcloak --build-arg VERSION=$(git describe --tags --always) .
#   docker run -v $PWD/pgcloak.yaml:/etc/pgcloak/pgcloak.yaml:ro -p 6432:6432 pgcloak
#
# The entrypoint runs `pgcloak serve -c /etc/pgcloak/pgcloak.yaml`. For another
# subcommand, override it: docker run --entrypoint pgcloak pgcloak check -c ...
# For the emulator: docker run --entrypoint pgcloak-kms pgcloak --listen 0.0.0.0:4599
# Port 6432 speaks the PostgreSQL protocol; 9187 serves /metrics, /healthz
# and /readyz when the configuration sets admin.address (docker-compose.yml
# does). Both run as an unprivileged user. The Go version of the builder must
# be at least go.mod's (cmd/pgcloak's compose_test.go checks this file).

# Builder: cgo is on because SQL parsing uses pg_query (libpg_query in C).
FROM golang:1.26-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=1
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pgcloak ./cmd/pgcloak \
 && go build -trimpath -ldflags "-s -w" -o /out/pgcloak-kms ./cmd/pgcloak-kms

# Runtime: the same Debian release as the builder, so the glibc matches.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pgcloak \
 && useradd --system --uid 10001 --gid pgcloak --no-create-home --shell /usr/sbin/nologin pgcloak \
 && mkdir -p /etc/pgcloak
COPY --from=build /out/pgcloak /out/pgcloak-kms /usr/local/bin/
USER 10001:10001
EXPOSE 6432 9187 4599
ENTRYPOINT ["/usr/local/bin/pgcloak", "serve", "-c", "/etc/pgcloak/pgcloak.yaml"]
