import { randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";
import { nanos } from "@nats-io/nats-core";
import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import {
  IDENTITY_HEADER,
  ServiceHost,
  auditStream,
  closeHttp,
  createClient,
  eventsStream,
  listenHttp,
  type Logger,
} from "@nearhub/platform";
import { SyncService } from "@nearhub/proto/sync";
import { ModelMirrorService } from "@nearhub/proto/model-mirror";
import { RegistryService } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import type { SyncConfig } from "./config.js";
import { GitFetcher } from "./git-fetcher.js";
import { UpstreamCredentials, resolveGitHubApps } from "./github-app.js";
import { RepoLayout } from "./git-repo.js";
import { createGitServer } from "./git-server.js";
import { LfsMirror } from "./lfs-mirror.js";
import { ModelMirrors } from "./hf-mirror.js";
import { MirrorStore } from "./mirror-store.js";
import { parseMirrorName } from "./mirror-name.js";
import { Scheduler } from "./scheduler.js";
import { StatusStore } from "./status-store.js";
import { syncApi } from "./sync-api.js";
import { SyncEngine } from "./sync-engine.js";
import { SyncMetrics } from "./sync-metrics.js";

/** The running sync service: its host plus the internal git smart-HTTP port the edge uses. */
export interface SyncHandle extends ServiceHost {
  /** Bound port of the internal git smart-HTTP endpoint. */
  gitHttpPort: number;
}

/**
 * Starts the sync service: mirror definitions and status over gRPC (KV buckets `mirrors` and
 * `mirror-status`), the scheduler and the job workers on `SYNC_JOBS`, and the internal git
 * smart-HTTP endpoint the edge serves clones from.
 */
export async function startSync(config: SyncConfig, options: { logger?: Logger } = {}): Promise<SyncHandle> {
  let gitHttpPort = -1;
  // Checked before anything starts: an app for an unknown upstream is a start-up error.
  const githubApps = resolveGitHubApps(config);
  const host = await ServiceHost.start(
    {
      name: "sync",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({
        streams: [
          eventsStream(names),
          auditStream(names),
          {
            // One job per mirror per due time; any replica takes any job.
            name: names.stream("SYNC_JOBS"),
            subjects: [names.subject("jobs.sync.>")],
            retention: RetentionPolicy.Workqueue,
            storage: StorageType.File,
            duplicate_window: nanos(20 * 60 * 1000),
          },
        ],
        kv: [
          { bucket: names.bucket("mirrors"), history: 5 },
          { bucket: names.bucket("mirror-status"), history: 1 },
          { bucket: names.bucket("model-mirrors"), history: 5 },
        ],
        consumers: [
          {
            stream: names.stream("SYNC_JOBS"),
            durable: "sync-git",
            filterSubject: names.subject("jobs.sync.git"),
            ackWaitMs: 60_000,
            maxDeliver: 10,
            maxAckPending: 10_000,
          },
        ],
      }),
    },
    async (host) => {
      const layout = new RepoLayout(config.NEARHUB_DATA_DIR);
      const leftovers = await layout.recoverLeftovers();
      if (leftovers > 0) host.logger.info("removed staging folders left by an interrupted sync", { count: leftovers });
      const store = new MirrorStore(await host.bus.kv(host.names.bucket("mirrors")));
      const status = new StatusStore(await host.bus.kv(host.names.bucket("mirror-status")));
      const metrics = new SyncMetrics(host.metrics);
      // LFS objects of `--lfs` mirrors go to storage, content-addressed by their oid (= sha256).
      const lfsStorage = createClient(StorageService, config.NEARHUB_STORAGE_ADDR, {
        credentials: host.tls.grpcChannelCredentials(),
        metrics: host.metrics,
        callMetadata: host.callMetadata(),
        maxMessageBytes: 16 * 1024 * 1024,
      });
      host.onStop(() => lfsStorage.$close());
      const credentials = new UpstreamCredentials(config.NEARHUB_GIT_TOKENS, githubApps);
      const lfs = new LfsMirror({
        storage: lfsStorage,
        tokens: config.NEARHUB_GIT_TOKENS,
        credentials,
        timeoutMs: config.NEARHUB_GIT_FETCH_TIMEOUT_S * 1000,
        onBytes: (n) => metrics.bytesFetched.inc(n),
      });
      const fetcher = new GitFetcher({
        lfs,
        layout,
        upstreams: config.NEARHUB_GIT_UPSTREAMS,
        tokens: config.NEARHUB_GIT_TOKENS,
        credentials,
        lsRemoteTimeoutMs: config.NEARHUB_GIT_LS_REMOTE_TIMEOUT_S * 1000,
        fetchTimeoutMs: config.NEARHUB_GIT_FETCH_TIMEOUT_S * 1000,
        cloneTimeoutMs: config.NEARHUB_GIT_CLONE_TIMEOUT_S * 1000,
        lowSpeedLimit: 1024,
        lowSpeedTimeS: config.NEARHUB_GIT_LOW_SPEED_TIME_S,
      });
      host.serve(
        SyncService,
        syncApi({ layout, store, status, bus: host.bus, upstreams: config.NEARHUB_GIT_UPSTREAMS }),
      );

      const server = createGitServer({
        layout,
        upstreams: config.NEARHUB_GIT_UPSTREAMS,
        metrics,
        logger: host.logger,
        tls: host.tls,
        lfs,
        authorize: (req, mirror) => {
          // Edge forwards who the reader is; the read is checked again here.
          const header = req.headers[IDENTITY_HEADER];
          if (typeof header !== "string")
            return { status: 401, message: `this internal endpoint needs the ${IDENTITY_HEADER} of a nearhub service` };
          try {
            const principal = host.access.identity.verify(header);
            const decision = host.access.decide(principal, "read", mirror);
            return decision.allowed ? undefined : { status: 403, message: decision.reason };
          } catch (error) {
            return { status: 401, message: (error as Error).message };
          }
        },
        lsRemote: async (name) => {
          const parsed = parseMirrorName(name, config.NEARHUB_GIT_UPSTREAMS);
          const def = (await store.get(parsed.full))?.mirror;
          return fetcher.upstreamRefs({ ...parsed, name: parsed.full, refs: def?.refs || "heads,tags" });
        },
      });
      await listenHttp(server, config.NEARHUB_BIND_HOST, config.NEARHUB_GIT_HTTP_PORT);
      gitHttpPort = (server.address() as AddressInfo).port;
      host.onStop(() => closeHttp(server));

      const engine = new SyncEngine({
        bus: host.bus,
        mirrors: store,
        status,
        fetcher,
        metrics,
        logger: host.logger,
        options: {
          replica: `${process.pid}-${randomUUID().slice(0, 8)}`,
          concurrency: config.NEARHUB_GIT_SYNC_CONCURRENCY,
          leaseMs: 90_000,
          backoffMs: config.NEARHUB_GIT_BACKOFF_S * 1000,
          maxBackoffMs: config.NEARHUB_GIT_MAX_BACKOFF_S * 1000,
          maintenanceIntervalMs: config.NEARHUB_GIT_MAINTENANCE_INTERVAL_S * 1000,
          archiveRetentionS: config.NEARHUB_GIT_ARCHIVE_RETENTION_S,
          rateLimitBackoffMs: config.NEARHUB_GIT_RATE_LIMIT_BACKOFF_S * 1000,
        },
      });
      await engine.start(host.names.stream("SYNC_JOBS"), "sync-git");
      host.onStop(() => engine.stop());
      const scheduler = new Scheduler({
        bus: host.bus,
        mirrors: store,
        status,
        metrics,
        logger: host.logger,
        tickMs: config.NEARHUB_GIT_SCHEDULER_TICK_MS,
      });
      scheduler.start();
      host.onStop(() => scheduler.stop());

      // Scheduled Hugging Face mirrors (`nearhub model add`), written to storage's registry.
      const storageOptions = {
        metrics: host.metrics,
        callMetadata: host.callMetadata(),
        credentials: host.tls.grpcChannelCredentials(),
      };
      const registryClient = createClient(RegistryService, config.NEARHUB_STORAGE_ADDR, storageOptions);
      const storageClient = createClient(StorageService, config.NEARHUB_STORAGE_ADDR, {
        ...storageOptions,
        maxMessageBytes: 16 * 1024 * 1024,
      });
      const modelMirrors = new ModelMirrors({
        kv: await host.bus.kv(host.names.bucket("model-mirrors")),
        bus: host.bus,
        registry: registryClient,
        storage: storageClient,
        upstream: config.NEARHUB_HF_UPSTREAM,
        ...(config.NEARHUB_HF_TOKEN ? { token: config.NEARHUB_HF_TOKEN } : {}),
        timeoutMs: config.NEARHUB_HF_UPSTREAM_TIMEOUT_MS,
        tickMs: config.NEARHUB_HF_MIRROR_TICK_MS,
        logger: host.logger.child({ component: "model-mirrors" }),
        metrics: host.metrics,
      });
      host.serve(ModelMirrorService, modelMirrors.api());
      modelMirrors.start();
      host.onStop(async () => {
        await modelMirrors.stop();
        registryClient.$close();
        storageClient.$close();
      });
    },
  );
  return Object.assign(host, { gitHttpPort });
}
