import { join } from "node:path";
import { ServiceHost, auditStream, createLogger, eventsStream, type Logger } from "@nearhub/platform";
import { RegistryService } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import type { BlobStore } from "./blob-store.js";
import { s3Settings, type StorageConfig } from "./config.js";
import { FsBlobStore } from "./fs-blob-store.js";
import { S3BlobStore } from "./s3-blob-store.js";
import { Maintenance } from "./maintenance.js";
import { Registry } from "./registry.js";
import { storageApi } from "./storage-api.js";
import { UploadSessions } from "./upload-sessions.js";

/**
 * The blob backend configuration chooses. Throws a ConfigError naming every missing S3
 * variable when the backend is s3.
 */
export function blobStoreFor(config: StorageConfig, logger?: Logger): BlobStore {
  if (config.NEARHUB_BLOB_BACKEND === "s3") {
    return new S3BlobStore({ ...s3Settings(config), ...(logger ? { logger } : {}) });
  }
  return new FsBlobStore(config.NEARHUB_BLOB_DIR ?? join(config.NEARHUB_DATA_DIR, "blobs"));
}

/** Starts the storage service: content-addressed blobs over nearhub.storage.v1. */
export async function startStorage(
  config: StorageConfig,
  options: { logger?: Logger; store?: BlobStore } = {},
): Promise<ServiceHost> {
  // One logger for host and store; the store is made first so a bad S3 setting fails before NATS is dialled.
  const logger = options.logger ?? createLogger({ service: "storage", level: config.LOG_LEVEL });
  const store = options.store ?? blobStoreFor(config, logger.child({ component: "blob-store" }));
  return ServiceHost.start(
    {
      name: "storage",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      maxMessageBytes: 16 * 1024 * 1024,
      logger,
      provisioning: (names) => ({
        streams: [eventsStream(names), auditStream(names)],
        kv: [
          { bucket: names.bucket("registry"), history: 1 },
          { bucket: names.bucket("upload-sessions"), history: 1 },
        ],
      }),
    },
    async (host) => {
      await store.check();
      // Registered first, so it runs after every other stop callback (maintenance, sessions):
      // the active pack of small blobs is sealed with its hint file, and the next start need
      // not re-hash it. A call still arriving after it reopens the pack.
      if (store instanceof FsBlobStore) host.onStop(() => store.close());
      const sessions = new UploadSessions(await host.bus.kv(host.names.bucket("upload-sessions")), store, {
        ttlMs: config.NEARHUB_UPLOAD_SESSION_TTL_MS,
        logger: logger.child({ component: "upload-sessions" }),
        registry: host.metrics.registry,
      });
      host.onStop(() => sessions.close());
      host.serve(StorageService, storageApi(store, host.bus, sessions));
      const registry = new Registry(await host.bus.kv(host.names.bucket("registry")), store);
      host.serve(RegistryService, registry.api(host.bus));
      const maintenance = new Maintenance(store, registry, sessions, host.bus, {
        graceMs: config.NEARHUB_GC_GRACE_MS,
        logger: logger.child({ component: "maintenance" }),
        registry: host.metrics.registry,
      });
      const every = (name: string, ms: number, job: () => Promise<unknown>) => {
        if (ms <= 0) return;
        let running: Promise<void> | undefined;
        const timer = setInterval(() => {
          running ??= job()
            .then(
              () => undefined,
              (error: unknown) => logger.warn(`${name} failed`, { error }),
            )
            .finally(() => (running = undefined));
        }, ms);
        timer.unref();
        // A job left running would use the NATS connection after it drains.
        host.onStop(async () => {
          clearInterval(timer);
          await running;
        });
      };
      every("upload session sweep", config.NEARHUB_UPLOAD_SWEEP_INTERVAL_MS, () => sessions.sweep());
      every("garbage collection", config.NEARHUB_GC_INTERVAL_MS, () => maintenance.collect());
      every("scrub", config.NEARHUB_SCRUB_INTERVAL_MS, () => maintenance.scrub(config.NEARHUB_SCRUB_SAMPLE));
    },
  );
}
