import { join } from "node:path";
import { ServiceHost, auditStream, type Logger } from "@nearhub/platform";
import { AccessService } from "@nearhub/proto/access";
import { AuditService } from "@nearhub/proto/audit";
import { accessApi } from "./access-api.js";
import { auditApi } from "./audit-api.js";
import type { AuditConfig } from "./config.js";
import { RecordIndex } from "./record-index.js";
import { RECORDER_BATCH, Recorder } from "./recorder.js";
import { loadSigningKey } from "./signing-key.js";
import { AuditTrail, trailStream } from "./trail.js";

/**
 * Starts the audit service: it owns the AUDIT inbox stream and the AUDIT_TRAIL stream (file
 * storage, deny delete, deny purge, retention from configuration and never under 180 days),
 * appends every audit event once as a hash-chained record with signed checkpoints, and
 * answers queries, verification and export.
 */
export async function startAudit(config: AuditConfig, options: { logger?: Logger } = {}): Promise<ServiceHost> {
  let index: RecordIndex | undefined;
  const suffix = (ns: string) => (ns ? `-${ns}` : "");
  return ServiceHost.start(
    {
      name: "audit",
      common: config,
      grpcPort: config.NEARHUB_GRPC_PORT,
      ...(options.logger ? { logger: options.logger } : {}),
      provisioning: (names) => ({
        streams: [
          auditStream(names, config.NEARHUB_AUDIT_RETENTION_DAYS, false),
          trailStream(names, config.NEARHUB_AUDIT_RETENTION_DAYS),
        ],
        consumers: [{ stream: names.stream("AUDIT"), durable: "audit-recorder" }],
      }),
    },
    async (host) => {
      const ns = host.names.namespace;
      const key = await loadSigningKey(
        config.NEARHUB_AUDIT_SIGNING_KEY ?? join(config.NEARHUB_DATA_DIR, `audit-signing-key${suffix(ns)}.pem`),
      );
      const db = new RecordIndex(join(config.NEARHUB_DATA_DIR, `audit${suffix(ns)}.sqlite`));
      index = db;
      host.onStop(() => db.close());
      const trail = new AuditTrail(host.bus, host.names, key, host.logger.child({ component: "trail" }));
      const recorder = new Recorder({
        trail,
        index: db,
        logger: host.logger.child({ component: "recorder" }),
        registry: host.metrics.registry,
        checkpointRecords: config.NEARHUB_AUDIT_CHECKPOINT_RECORDS,
        checkpointIntervalMs: config.NEARHUB_AUDIT_CHECKPOINT_SECONDS * 1000,
      });
      await recorder.start();
      host.onStop(() => recorder.stop());
      host.serve(
        AuditService,
        auditApi({ index: db, trail, recorder, trustedKeys: new Map([[key.keyId, key.publicKey]]) }),
      );
      // The audit service owns the `rbac` bucket: tokens and role bindings.
      if (config.NEARHUB_ADMIN_TOKEN) await host.access.store.ensureBootstrapToken(config.NEARHUB_ADMIN_TOKEN);
      host.serve(AccessService, accessApi({ access: host.access, bus: host.bus }));
      const consumer = await host.bus.consume(
        { stream: host.names.stream("AUDIT"), durable: "audit-recorder" },
        recorder.handler(),
        // Two batches' worth in flight: the next batch fills while the last one is appended.
        { concurrency: 2 * RECORDER_BATCH },
      );
      host.onStop(() => consumer.stop(config.NEARHUB_SHUTDOWN_TIMEOUT_MS));
    },
  ).catch((error: unknown) => {
    index?.close();
    throw error;
  });
}
