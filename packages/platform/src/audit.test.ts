import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { fromJsonString } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { AuditEventSchema } from "@nearhub/proto/audit";
import { Decision, Outcome, publishAudit } from "./audit.js";
import { Bus } from "./bus.js";
import { silentLogger } from "./logger.js";
import { Names } from "./names.js";
import type { CallContext } from "./rpc-types.js";
import { auditStream } from "./streams.js";
import { startTelemetry, type Telemetry } from "./telemetry.js";

const NATS_URL = process.env["NATS_URL"] || "nats://127.0.0.1:4222";

let telemetry: Telemetry;
let bus: Bus;
const names = new Names(`t${randomBytes(5).toString("hex")}`);
before(async () => {
  telemetry = startTelemetry({
    serviceName: "audit-test",
    spanProcessors: [new SimpleSpanProcessor(new InMemorySpanExporter())],
  });
  bus = await Bus.connect({ url: NATS_URL, name: "audit-test", source: "nearhub/test", names, logger: silentLogger });
  await bus.provision({ streams: [auditStream(names, 1, false)] });
});
after(async () => {
  await bus.jsm.streams.delete(names.stream("AUDIT")).catch(() => undefined);
  await bus.drain();
  await telemetry.shutdown();
});

async function stored(subject: string) {
  const m = await bus.jsm.streams.getMessage(names.stream("AUDIT"), { last_by_subj: subject });
  assert.ok(m, `a message on ${subject}`);
  return m;
}

describe("publishAudit", () => {
  test("stores the action as a CloudEvent on nearhub.audit.<service>.<action>, actor from the call", async () => {
    const metadata = new grpc.Metadata();
    metadata.set("user-agent", "nearhub-cli/0.1");
    const ctx = {
      principal: { subject: "user:alice", groups: ["admins"] },
      peer: "ipv4:10.0.0.7:51234",
      metadata,
    } as unknown as CallContext;
    const { event, traceId } = await trace.getTracer("audit-test").startActiveSpan("AddMirror", async (span) => {
      try {
        const event = await publishAudit(
          bus,
          "sync",
          { action: "mirror.add", resource: "mirror:acme/x", details: { interval: "300s" } },
          ctx,
        );
        return { event, traceId: span.spanContext().traceId };
      } finally {
        span.end();
      }
    });
    const m = await stored(names.auditSubject("sync", "mirror.add"));
    assert.equal(m.subject, `${names.root}.audit.sync.mirror.add`);
    assert.equal(m.header.get("ce-specversion"), "1.0");
    assert.equal(m.header.get("ce-id"), event.id);
    assert.equal(m.header.get("ce-type"), "nearhub.audit.mirror.add");
    assert.equal(m.header.get("ce-source"), "nearhub/sync");
    assert.equal(m.header.get("Nats-Msg-Id"), event.id);
    assert.match(m.header.get("traceparent"), new RegExp(`^00-${traceId}-`));

    const body = fromJsonString(AuditEventSchema, m.string());
    assert.equal(body.id, event.id);
    assert.equal(body.service, "sync");
    assert.equal(body.actor, "user:alice");
    assert.equal(body.action, "mirror.add");
    assert.equal(body.resource, "mirror:acme/x");
    assert.equal(body.decision, Decision.ALLOW);
    assert.equal(body.outcome, Outcome.SUCCESS);
    assert.equal(body.clientAddress, "ipv4:10.0.0.7:51234");
    assert.equal(body.userAgent, "nearhub-cli/0.1");
    assert.equal(body.traceId, traceId);
    assert.deepEqual(body.details, { interval: "300s" });
    assert.ok(body.time && Math.abs(timestampDate(body.time).getTime() - Date.now()) < 60_000);
  });

  test("without a call the actor is the service itself, and a refusal is recorded as such", async () => {
    const event = await publishAudit(bus, "storage", {
      action: "blob.delete",
      resource: "sha256:00",
      decision: Decision.DENY,
      outcome: Outcome.FAILURE,
    });
    assert.equal(event.actor, "service:storage");
    const body = fromJsonString(
      AuditEventSchema,
      (await stored(names.auditSubject("storage", "blob.delete"))).string(),
    );
    assert.equal(body.actor, "service:storage");
    assert.equal(body.decision, Decision.DENY);
    assert.equal(body.outcome, Outcome.FAILURE);
    assert.equal(body.clientAddress, "");
  });

  test("every record gets its own id, so two identical actions are two records", async () => {
    const a = await publishAudit(bus, "edge", { action: "login", resource: "user:bob" });
    const b = await publishAudit(bus, "edge", { action: "login", resource: "user:bob" });
    assert.notEqual(a.id, b.id);
    const info = await bus.jsm.streams.info(names.stream("AUDIT"), {
      subjects_filter: names.auditSubject("edge", "login"),
    });
    assert.equal(info.state.subjects?.[names.auditSubject("edge", "login")], 2);
  });
});
