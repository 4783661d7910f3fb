import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { toJsonString, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  Bus,
  ConfigError,
  createClient,
  parseEnv,
  publishAudit,
  silentLogger,
  Names,
  type ServiceHost,
} from "@nearhub/platform";
import { AuditEventSchema, AuditService, Decision } from "@nearhub/proto/audit";
import { auditEnv, startAudit } from "@nearhub/audit";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { deleteNamespace, eventually, nats, serviceEnv, tempDir, uniqueNamespace } from "./harness.js";

describe("audit trail: every event once, chained, signed, verifiable, exportable", () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let audit: ServiceHost;
  let edge: Edge;
  let bus: Bus;
  let env: Record<string, string>;

  const startAuditService = async (port = 0) =>
    startAudit(
      parseEnv("audit", auditEnv, { ...env, NEARHUB_AUDIT_CHECKPOINT_RECORDS: "5", NEARHUB_GRPC_PORT: String(port) }),
    );

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    env = serviceEnv(natsUrl, ns, dir.path);
    audit = await startAuditService();
    edge = await startEdge(parseEnv("edge", edgeEnv, { ...env, NEARHUB_AUDIT_ADDR: `127.0.0.1:${audit.grpcPort}` }));
    bus = await Bus.connect({
      url: natsUrl,
      name: "audit-test",
      source: "nearhub/test",
      names: new Names(ns),
      logger: silentLogger,
    });
  });

  after(async () => {
    await bus?.drain();
    await edge?.stop();
    await audit?.stop();
    await deleteNamespace(natsUrl, ns);
    await dir.cleanup();
  });

  const client = () => createClient(AuditService, `127.0.0.1:${audit.grpcPort}`);

  test("events are recorded once each, in a chain that verifies", async () => {
    for (let i = 0; i < 12; i++) {
      await publishAudit(bus, "storage", {
        action: "blob.put",
        resource: `sha256:${i}`,
        decision: i % 4 === 0 ? Decision.DENY : Decision.ALLOW,
      });
    }
    // The same event delivered again under another message id (beyond JetStream's dedup).
    const dup = create(AuditEventSchema, {
      id: "dup-1",
      time: timestampNow(),
      service: "edge",
      actor: "user:bob",
      action: "repo.read",
      resource: "models/acme/x",
    });
    for (const msgID of ["a", "b"]) {
      await bus.publish(
        bus.names.auditSubject("edge", "repo.read"),
        new TextEncoder().encode(toJsonString(AuditEventSchema, dup)),
        { msgID },
      );
    }
    const c = client();
    try {
      const records = await eventually(
        async () => {
          const { records } = await c.queryRecords({ pageSize: 1000 });
          return records.length >= 13 ? records : undefined;
        },
        15_000,
        "13 records",
      );
      assert.equal(records.length, 13);
      assert.deepEqual(
        records.map((r) => r.sequence),
        Array.from({ length: 13 }, (_, i) => BigInt(i + 1)),
      );
      for (let i = 1; i < records.length; i++) assert.equal(records[i]!.prevHash, records[i - 1]!.hash);
      const denied = await c.queryRecords({ decision: Decision.DENY });
      assert.equal(denied.records.length, 3);
      const verdict = await c.verifyTrail({});
      assert.equal(verdict.ok, true, verdict.problem);
      assert.equal(verdict.recordsChecked, 13n);
      assert.ok(verdict.checkpointsChecked >= 2n, "a checkpoint every 5 records");
    } finally {
      c.$close();
    }
  });

  test("a restart continues the chain; a lost index is rebuilt from the trail", async () => {
    const port = audit.grpcPort;
    await audit.stop();
    await rm(join(dir.path, `audit-${ns}.sqlite`), { force: true });
    await rm(join(dir.path, `audit-${ns}.sqlite-wal`), { force: true });
    await rm(join(dir.path, `audit-${ns}.sqlite-shm`), { force: true });
    // Same port, so the edge's channel reconnects to the new process.
    audit = await startAuditService(port);
    await publishAudit(bus, "sync", { action: "mirror.add", resource: "github.com/acme/after-restart" });
    const c = client();
    try {
      const records = await eventually(
        async () => {
          const { records } = await c.queryRecords({ pageSize: 1000 });
          return records.length >= 14 ? records : undefined;
        },
        15_000,
        "the rebuilt index and the new record",
      );
      assert.equal(records.length, 14);
      assert.equal(records[13]!.event?.resource, "github.com/acme/after-restart");
      assert.equal(records[13]!.prevHash, records[12]!.hash);
      assert.equal((await c.verifyTrail({})).ok, true);
    } finally {
      c.$close();
    }
  });

  test("the trail stream refuses deletes and purges", async () => {
    const stream = new Names(ns).stream("AUDIT_TRAIL");
    await assert.rejects(bus.jsm.streams.purge(stream), /purge/i);
    await assert.rejects(bus.jsm.streams.deleteMessage(stream, 1), /delete/i);
    const info = await bus.jsm.streams.info(stream);
    assert.equal(info.config.deny_delete, true);
    assert.equal(info.config.deny_purge, true);
    assert.ok(info.config.max_age >= 180 * 24 * 3600 * 1e9);
  });

  test("the edge serves query, verify and NDJSON export", async () => {
    const base = `http://127.0.0.1:${edge.httpPort}`;
    let r = await fetch(`${base}/api/audit/records?action=blob.put&limit=3`);
    assert.equal(r.status, 200);
    const page = (await r.json()) as { records: unknown[]; nextCursor: string };
    assert.equal(page.records.length, 3);
    assert.ok(page.nextCursor);
    r = await fetch(`${base}/api/audit/verify`, { method: "POST" });
    assert.equal(((await r.json()) as { ok: boolean }).ok, true);
    r = await fetch(`${base}/api/audit/export`);
    assert.equal(r.headers.get("content-type"), "application/x-ndjson; charset=utf-8");
    const lines = (await r.text()).trim().split("\n");
    assert.equal(lines.length, 14);
    assert.equal((JSON.parse(lines[0]!) as { sequence: string }).sequence, "1");
    for (const bad of ["since=yesterday", "decision=maybe", "limit=0", "limit=5000"]) {
      r = await fetch(`${base}/api/audit/records?${bad}`);
      assert.equal(r.status, 400, bad);
      assert.ok(((await r.json()) as { error: string }).error.length > 10);
    }
    r = await fetch(`${base}/api/audit/verify?since_sequence=-1`, { method: "POST" });
    assert.equal(r.status, 400);
  });

  test("retention under 180 days is refused at start-up", () => {
    assert.throws(
      () => parseEnv("audit", auditEnv, { NEARHUB_AUDIT_RETENTION_DAYS: "90" }),
      (e: unknown) => e instanceof ConfigError && /at least 180 days/.test(e.message),
    );
  });
});
