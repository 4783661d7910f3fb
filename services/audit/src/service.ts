import { join } from "node:path";
import { ServiceHost, auditStream, type Logger } from "@nearhub/platform";
import { auditSchema } from "@nearhub/proto/events";
import { AuditService } from "@nearhub/proto/audit";
import { auditApi } from "./audit-api.js";
import type { AuditConfig } from "./config.js";
import { RecordIndex } from "./record-index.js";

/**
 * Starts the audit service: it owns the AUDIT stream (file storage, deny delete, deny purge,
 * retention from configuration, at least 180 days), records every audit event once, and
 * answers queries.
 */
export async function startAudit(config: AuditConfig, options: { logger?: Logger } = {}): Promise<ServiceHost> {
  let index: RecordIndex | undefined;
  return ServiceHost.start(
    {
      name: "audit",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({
        streams: [auditStream(names, config.NEARHUB_AUDIT_RETENTION_DAYS, false)],
        consumers: [{ stream: names.stream("AUDIT"), durable: "audit-recorder" }],
      }),
    },
    async (host) => {
      const db = new RecordIndex(
        join(config.NEARHUB_DATA_DIR, `audit${host.names.namespace ? `-${host.names.namespace}` : ""}.sqlite`),
      );
      index = db;
      host.onStop(() => db.close());
      host.serve(AuditService, auditApi(db));
      const consumer = await host.bus.consume(
        { stream: host.names.stream("AUDIT"), durable: "audit-recorder" },
        async (message) => {
          // Every message on the audit subjects is an AuditEvent; a malformed one is dead-lettered.
          const event = message.decode({ domain: "audit", what: "event", type: "nearhub.audit", schema: auditSchema });
          if (!event.id) event.id = message.id ?? `seq-${message.streamSequence}`;
          db.record(event);
        },
      );
      host.onStop(() => consumer.stop(config.NEARHUB_SHUTDOWN_TIMEOUT_MS));
    },
  ).catch((error: unknown) => {
    index?.close();
    throw error;
  });
}
