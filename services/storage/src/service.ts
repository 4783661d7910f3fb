import { join } from "node:path";
import { ServiceHost, auditStream, eventsStream, type Logger } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import type { BlobStore } from "./blob-store.js";
import type { StorageConfig } from "./config.js";
import { FsBlobStore } from "./fs-blob-store.js";
import { storageApi } from "./storage-api.js";

/** The blob backend configuration chooses. */
export function blobStoreFor(config: StorageConfig): BlobStore {
  if (config.NEARHUB_BLOB_BACKEND === "s3") {
    throw new Error("NEARHUB_BLOB_BACKEND=s3 is not available in this build; use fs");
  }
  return new FsBlobStore(config.NEARHUB_BLOB_DIR ?? join(config.NEARHUB_DATA_DIR, "blobs"));
}

/** Starts the storage service: content-addressed blobs over nearhub.storage.v1. */
export async function startStorage(config: StorageConfig, options: { logger?: Logger; store?: BlobStore } = {}): Promise<ServiceHost> {
  const store = options.store ?? blobStoreFor(config);
  return ServiceHost.start(
    {
      name: "storage",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      maxMessageBytes: 16 * 1024 * 1024,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({ streams: [eventsStream(names), auditStream(names)] }),
    },
    async (host) => {
      await store.check();
      host.serve(StorageService, storageApi(store, host.bus));
    },
  );
}
