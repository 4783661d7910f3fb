import { randomUUID } from "node:crypto";
import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { AuditEventSchema, Decision, Outcome, type AuditEvent } from "@nearhub/proto/audit";
import { headers as createHeaders } from "@nats-io/nats-core";
import { trace } from "@opentelemetry/api";
import type { Bus } from "./bus.js";
import type { Metadata } from "@grpc/grpc-js";
import type { Principal } from "./rpc-types.js";
import { injectIntoHeaders } from "./trace-context.js";

export { Decision, Outcome };

/** What a service says about one audited action. */
export interface AuditEntry {
  /** Dotted, e.g. `mirror.add`. */
  action: string;
  resource: string;
  decision?: Decision;
  outcome?: Outcome;
  details?: Record<string, string>;
}

/** Who acted and from where: a gRPC call context, or what edge knows of an HTTP request. */
export interface AuditSource {
  principal: Principal;
  peer: string;
  metadata?: Metadata;
  userAgent?: string;
}

/**
 * Publishes `nearhub.audit.<service>.<action>` as a CloudEvent into the AUDIT stream and waits
 * for the ack: an action is not reported done before its audit record is durable. Actor,
 * client address, user agent and trace id come from the call.
 */
export async function publishAudit(
  bus: Bus,
  service: string,
  entry: AuditEntry,
  ctx?: AuditSource,
): Promise<AuditEvent> {
  const spanContext = trace.getActiveSpan()?.spanContext();
  const event = create(AuditEventSchema, {
    id: randomUUID(),
    time: timestampNow(),
    service,
    actor: ctx?.principal.subject ?? `service:${service}`,
    action: entry.action,
    resource: entry.resource,
    decision: entry.decision ?? Decision.ALLOW,
    outcome: entry.outcome ?? Outcome.SUCCESS,
    clientAddress: ctx?.peer ?? "",
    userAgent: ctx?.userAgent ?? String(ctx?.metadata?.get("user-agent")[0] ?? ""),
    traceId: spanContext?.traceId ?? "",
    details: { ...entry.details, ...(ctx?.principal.via ? { via: ctx.principal.via } : {}) },
  });
  const h = createHeaders();
  h.set("ce-specversion", "1.0");
  h.set("ce-id", event.id);
  h.set("ce-type", `nearhub.audit.${entry.action}`);
  h.set("ce-source", `nearhub/${service}`);
  h.set("ce-time", new Date().toISOString());
  h.set("content-type", "application/json");
  injectIntoHeaders(h);
  await bus.publish(
    bus.names.auditSubject(service, entry.action),
    new TextEncoder().encode(toJsonString(AuditEventSchema, event)),
    {
      msgID: event.id,
      headers: h,
      type: "audit",
    },
  );
  return event;
}
