import { createClient, type Client, type ServiceMetrics } from "@nearhub/platform";
import { AuditService } from "@nearhub/proto/audit";
import { Health } from "@nearhub/proto/health";
import { SearchService } from "@nearhub/proto/search";
import { StorageService } from "@nearhub/proto/storage";
import { SyncService } from "@nearhub/proto/sync";
import type { EdgeConfig } from "./config.js";

/** The services edge calls, each with a health client for `/healthz`. */
export interface Backends {
  sync: Client<typeof SyncService>;
  storage: Client<typeof StorageService>;
  search: Client<typeof SearchService>;
  audit: Client<typeof AuditService>;
  /** Health clients by service name. */
  health: Record<string, Client<typeof Health>>;
  close(): void;
}

/** Opens gRPC channels to every backend (lazily connected by grpc-js). */
export function connectBackends(config: EdgeConfig, metrics: ServiceMetrics): Backends {
  const options = { metrics, metadata: { "x-nearhub-caller": "service:edge" } };
  const addresses: Record<string, string> = {
    sync: config.NEARHUB_SYNC_ADDR,
    storage: config.NEARHUB_STORAGE_ADDR,
    indexing: config.NEARHUB_INDEXING_ADDR,
    audit: config.NEARHUB_AUDIT_ADDR,
    "inference-gateway": config.NEARHUB_INFERENCE_ADDR,
  };
  const health: Record<string, Client<typeof Health>> = {};
  for (const [name, address] of Object.entries(addresses)) health[name] = createClient(Health, address, options);
  const backends: Backends = {
    sync: createClient(SyncService, config.NEARHUB_SYNC_ADDR, options),
    storage: createClient(StorageService, config.NEARHUB_STORAGE_ADDR, options),
    search: createClient(SearchService, config.NEARHUB_INDEXING_ADDR, options),
    audit: createClient(AuditService, config.NEARHUB_AUDIT_ADDR, options),
    health,
    close() {
      for (const c of [backends.sync, backends.storage, backends.search, backends.audit, ...Object.values(health)])
        c.$close();
    },
  };
  return backends;
}
