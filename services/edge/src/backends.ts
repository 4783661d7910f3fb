import {
  Agent as HttpAgent,
  request as httpRequest,
  type ClientRequest,
  type IncomingMessage,
  type RequestOptions,
} from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { TransportSecurity, createClient, type Client, type ServiceMetrics } from "@nearhub/platform";
import { AccessService } from "@nearhub/proto/access";
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
  /** Tokens and role bindings (the audit service owns them). */
  access: Client<typeof AccessService>;
  /** Health clients by service name. */
  health: Record<string, Client<typeof Health>>;
  /** The sync service's internal git smart-HTTP endpoint (NEARHUB_SYNC_GIT_URL), over TLS when it is https. */
  syncGit: SyncGit;
  /** Headers that vouch for the current request's user to the other services. */
  identity: () => Record<string, string>;
  close(): void;
}

/** Requests to the sync service's git endpoint: host, port, scheme and agent filled in. */
export interface SyncGit {
  url: URL;
  request(options: RequestOptions, onResponse: (res: IncomingMessage) => void): ClientRequest;
}

/** A keep-alive client of NEARHUB_SYNC_GIT_URL; https URLs use the service TLS (CA, client certificate). */
export function syncGitClient(
  config: EdgeConfig,
  tls: TransportSecurity,
  identity: () => Record<string, string> = () => ({}),
): SyncGit {
  const url = new URL(config.NEARHUB_SYNC_GIT_URL);
  const secure = url.protocol === "https:";
  const agent = secure
    ? new HttpsAgent({ keepAlive: true, maxSockets: 256, ...tls.httpsAgentOptions() })
    : new HttpAgent({ keepAlive: true, maxSockets: 256 });
  const send = secure ? httpsRequest : httpRequest;
  const port = url.port || (secure ? 443 : 80);
  return {
    url,
    // Every request vouches for the reader (sync checks the read again).
    request: (options, onResponse) =>
      send(
        {
          ...options,
          headers: { ...(options.headers as Record<string, string>), ...identity() },
          agent,
          host: url.hostname,
          port,
        },
        onResponse,
      ),
  };
}

/** Opens gRPC channels to every backend (lazily connected by grpc-js); TLS when the service calls use it. */
export function connectBackends(
  config: EdgeConfig,
  metrics: ServiceMetrics,
  tls: TransportSecurity = TransportSecurity.plain(),
  callMetadata: () => Record<string, string> = () => ({}),
): Backends {
  // Each call carries the identity of the user the request runs for (or edge's own).
  const options = { metrics, callMetadata, credentials: tls.grpcChannelCredentials() };
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
    access: createClient(AccessService, config.NEARHUB_AUDIT_ADDR, options),
    health,
    syncGit: syncGitClient(config, tls, callMetadata),
    identity: callMetadata,
    close() {
      for (const c of [
        backends.sync,
        backends.storage,
        backends.search,
        backends.audit,
        backends.access,
        ...Object.values(health),
      ])
        c.$close();
    },
  };
  return backends;
}
