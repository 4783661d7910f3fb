# syntax=docker/dockerfile:1
#
# One image for every nearhub service; the command picks the service:
#   docker run nearhub:local                                    # edge (the default)
#   docker run nearhub:local node services/sync/dist/main.js    # any other service
# docker-compose.yml sets `command:` per service. Health checks live in compose (and in
# Kubernetes probes), not here, because the port differs per service.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------------------------
# build: install every dependency, compile with `tsc -b`, then drop the dev dependencies.
# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build

# better-sqlite3 (audit, indexing) compiles with node-gyp when no prebuilt binary can be
# downloaded, which is the normal case behind the slow or blocked links nearhub is made for.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
# Build native addons against the headers that ship in this image instead of downloading them.
ENV npm_config_nodedir=/usr/local

WORKDIR /app

# Manifests first: the dependency layer is rebuilt only when a package.json or the lockfile
# changes. Every workspace named in the root package.json must be listed here.
COPY package.json package-lock.json .npmrc ./
COPY packages/proto/package.json packages/proto/
COPY packages/platform/package.json packages/platform/
COPY packages/cli/package.json packages/cli/
COPY services/edge/package.json services/edge/
COPY services/sync/package.json services/sync/
COPY services/storage/package.json services/storage/
COPY services/indexing/package.json services/indexing/
COPY services/inference-gateway/package.json services/inference-gateway/
COPY services/audit/package.json services/audit/
RUN --mount=type=cache,target=/root/.npm,sharing=locked \
    npm ci --no-audit --no-fund

# The CLI's project references every service and shared package, so building it builds
# everything that runs (tests and bench are left out of the image).
COPY tsconfig.json tsconfig.base.json ./
COPY packages ./packages
COPY services ./services
RUN npx tsc -b packages/cli

# Keep only what runs: production node_modules (with the compiled better-sqlite3 binary) and
# each workspace's package.json, dist/ and any nested node_modules. The workspace symlinks in
# node_modules/@nearhub point at ../../packages/* and ../../services/*, which this layout keeps.
# node_modules/.cache holds the compiled tests/ and bench/ (their tsconfig outDir): not shipped.
RUN npm prune --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/.cache \
 && mkdir -p /out \
 && cp -a package.json node_modules /out/ \
 && for ws in $(node -p "require('./package.json').workspaces.join(' ')"); do \
      mkdir -p "/out/$ws" \
      && cp -a "$ws/package.json" "$ws/dist" "/out/$ws/" \
      && if [ -d "$ws/node_modules" ]; then cp -a "$ws/node_modules" "/out/$ws/"; fi; \
    done

# ---------------------------------------------------------------------------------------------
# runtime: Node.js, git (sync runs the git CLI), tini, the built app; runs as uid 1000.
# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="nearhub" \
      org.opencontainers.image.description="GitHub repositories and AI model hubs, brought near the teams that use them." \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: git and fetch() reach upstreams (github.com, huggingface.co) over HTTPS.
# tini: PID 1 that forwards SIGTERM to node and reaps the git child processes sync spawns.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The app is owned by root and read-only to the service user; only /data is writable.
COPY --from=build /out/ /app/

# A fresh named volume mounted on /data takes this ownership, so uid 1000 can write to it.
RUN mkdir -p /data && chown 1000:1000 /data

# Numeric, so Kubernetes' runAsNonRoot can verify it (the base image names uid 1000 `node`).
USER 1000:1000
ENV HOME=/home/node

# edge HTTP 8080 and gRPC 7100; sync/storage/indexing/audit gRPC 7101-7104 and metrics
# 9101-9104; inference-gateway gRPC 8001 and metrics 8002. Documentation only.
EXPOSE 8080 7100 7101 7102 7103 7104 9101 9102 9103 9104 8001 8002

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "services/edge/dist/main.js"]
