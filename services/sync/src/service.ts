import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { ServiceHost, auditStream, eventsStream, type Logger } from "@nearhub/platform";
import { SyncService } from "@nearhub/proto/sync";
import type { SyncConfig } from "./config.js";
import { MirrorStore } from "./mirror-store.js";
import { syncApi } from "./sync-api.js";

/** Starts the sync service: mirror definitions over gRPC, backed by the `mirrors` bucket. */
export async function startSync(config: SyncConfig, options: { logger?: Logger } = {}): Promise<ServiceHost> {
  return ServiceHost.start(
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
          },
        ],
        kv: [{ bucket: names.bucket("mirrors"), history: 5 }],
      }),
    },
    async (host) => {
      const store = new MirrorStore(await host.bus.kv(host.names.bucket("mirrors")));
      host.serve(SyncService, syncApi({ store, bus: host.bus, upstreams: config.NEARHUB_GIT_UPSTREAMS }));
    },
  );
}
