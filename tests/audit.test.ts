import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import Database from "better-sqlite3";
import {
  Bus,
  Code,
  ConfigError,
  NearhubError,
  createClient,
  parseEnv,
  publishAudit,
  silentLogger,
  Names,
  type ServiceHost,
} from "@nearhub/platform";
import { AccessService } from "@nearhub/proto/access";
import { AuditEventSchema, AuditRecordSchema, AuditService, Decision, Outcome } from "@nearhub/proto/audit";
import { auditEnv, recordHash, startAudit } from "@nearhub/audit";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { adminAuth, deleteNamespace, eventually, nats, serviceEnv, tempDir, uniqueNamespace } from "./harness.js";

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

  const client = () => createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, { metadata: adminAuth(ns) });

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
      for (const r of records) {
        assert.match(r.hash, /^[0-9a-f]{64}$/);
        assert.match(r.keyId, /^[0-9a-f]{16}$/, "each record names the key that signed it");
        assert.equal(Buffer.from(r.signature, "base64").length, 64, "an Ed25519 signature");
      }
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
    const headers = adminAuth(ns);
    let r = await fetch(`${base}/api/audit/records?action=blob.put&limit=3`, { headers });
    assert.equal(r.status, 200);
    const page = (await r.json()) as { records: unknown[]; nextCursor: string };
    assert.equal(page.records.length, 3);
    assert.ok(page.nextCursor);
    r = await fetch(`${base}/api/audit/verify`, { method: "POST", headers });
    assert.equal(((await r.json()) as { ok: boolean }).ok, true);
    r = await fetch(`${base}/api/audit/export`, { headers });
    assert.equal(r.headers.get("content-type"), "application/x-ndjson; charset=utf-8");
    const lines = (await r.text()).trim().split("\n");
    assert.equal(lines.length, 14);
    assert.equal((JSON.parse(lines[0]!) as { sequence: string }).sequence, "1");
    for (const bad of ["since=yesterday", "decision=maybe", "limit=0", "limit=5000"]) {
      r = await fetch(`${base}/api/audit/records?${bad}`, { headers });
      assert.equal(r.status, 400, bad);
      assert.ok(((await r.json()) as { error: string }).error.length > 10);
    }
    r = await fetch(`${base}/api/audit/verify?since_sequence=-1`, { method: "POST", headers });
    assert.equal(r.status, 400);
  });

  test("anonymous and viewer callers are refused query, verify and export, and each refusal is recorded", async () => {
    const addr = `127.0.0.1:${audit.grpcPort}`;
    const access = createClient(AccessService, addr, { metadata: adminAuth(ns) });
    const { token, secret } = await access.createToken({ name: "audit-viewer", role: "viewer", scopes: [] });
    access.$close();
    assert.ok(token && secret.startsWith("nhp_"));
    const callers = [
      { who: "anonymous", code: Code.Unauthenticated, c: createClient(AuditService, addr) },
      {
        who: `token:${token.id}`,
        code: Code.PermissionDenied,
        c: createClient(AuditService, addr, { metadata: { authorization: `Bearer ${secret}` } }),
      },
    ];
    const admin = client();
    try {
      for (const { who, code, c } of callers) {
        const refused = (what: string) => (e: unknown) => {
          assert.ok(e instanceof NearhubError, `${who} ${what}: ${String(e)}`);
          assert.equal(e.code, code, `${who} ${what}: ${e.message}`);
          assert.match(e.message, /'audit\.read' on 'audit'/, `${who} ${what}`);
          return true;
        };
        await assert.rejects(c.queryRecords({ pageSize: 10 }), refused("query"));
        await assert.rejects(c.verifyTrail({}), refused("verify"));
        await assert.rejects(async () => {
          for await (const item of c.exportRecords({}))
            assert.fail(`${who} exported record ${String(item.record?.sequence)}`);
        }, refused("export"));
      }
      const denials = await eventually(
        async () => {
          const { records } = await admin.queryRecords({ action: "access.audit.read", pageSize: 100 });
          return records.length >= 6 ? records : undefined;
        },
        15_000,
        "six recorded refusals",
      );
      assert.equal(denials.length, 6);
      for (const { who } of callers) {
        const mine = denials.filter((r) => r.event?.actor === who);
        assert.equal(mine.length, 3, `refusals of ${who}`);
        for (const r of mine) {
          assert.equal(r.event?.decision, Decision.DENY);
          assert.equal(r.event?.outcome, Outcome.FAILURE);
          assert.equal(r.event?.resource, "audit");
          assert.equal(r.event?.service, "audit");
          assert.ok(r.event?.details["reason"], "the refusal says why");
        }
      }
      // The refusals are in the trail itself, chained and signed like any record.
      const verdict = await admin.verifyTrail({});
      assert.equal(verdict.ok, true, verdict.problem);
      assert.equal(verdict.lastSequence, denials.at(-1)!.sequence);
    } finally {
      admin.$close();
      for (const { c } of callers) c.$close();
    }
  });

  test("the audit service exports records written, verify failures and record lag", async () => {
    const text = await (await fetch(`http://127.0.0.1:${audit.metricsPort}/metrics`)).text();
    const value = (name: string) => {
      const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
      assert.ok(line, `${name} is exported`);
      return Number(line.slice(line.lastIndexOf(" ") + 1));
    };
    // Since the restart: the record after it and the six refusals.
    const written = value("nearhub_audit_records_written_total");
    assert.ok(written >= 7, `records written: ${written}`);
    assert.equal(value("nearhub_audit_record_lag_seconds_count"), written, "one lag observation per record");
    assert.ok(value("nearhub_audit_record_lag_seconds_sum") >= 0);
    assert.equal(value("nearhub_audit_verify_failures_total"), 0, "every verification so far passed");
    assert.match(text, /# TYPE nearhub_audit_record_lag_seconds histogram/);
  });

  test("retention under 180 days is refused at start-up", () => {
    assert.throws(
      () => parseEnv("audit", auditEnv, { NEARHUB_AUDIT_RETENTION_DAYS: "90" }),
      (e: unknown) => e instanceof ConfigError && /at least 180 days/.test(e.message),
    );
  });
});

describe("audit verify: tampering with the trail or the query index is named", () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let audit: ServiceHost;
  let bus: Bus;
  let db: Database.Database;
  let c: ReturnType<typeof createClient<typeof AuditService>>;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const env = serviceEnv(natsUrl, ns, dir.path, { NEARHUB_AUDIT_CHECKPOINT_RECORDS: "5" });
    audit = await startAudit(parseEnv("audit", auditEnv, env));
    bus = await Bus.connect({
      url: natsUrl,
      name: "audit-tamper-test",
      source: "nearhub/test",
      names: new Names(ns),
      logger: silentLogger,
    });
    c = createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, { metadata: adminAuth(ns) });
    for (let i = 1; i <= 8; i++) {
      await publishAudit(bus, "storage", { action: "blob.put", resource: `sha256:${i}` });
    }
    await eventually(
      async () => ((await c.queryRecords({ pageSize: 100 })).records.length >= 8 ? true : undefined),
      15_000,
      "8 records",
    );
    // Another connection to the service's own index file, as someone with access to its disk.
    db = new Database(join(dir.path, `audit-${ns}.sqlite`));
  });

  after(async () => {
    c?.$close();
    db?.close();
    await bus?.drain();
    await audit?.stop();
    await deleteNamespace(natsUrl, ns);
    await dir.cleanup();
  });

  const verify = async () => {
    const verdict = await c.verifyTrail({});
    return verdict;
  };

  test("an edited row in the query index is reported by verify", async () => {
    assert.equal((await verify()).ok, true);
    db.prepare("UPDATE records SET actor = 'user:nobody' WHERE seq = 3").run();
    // Queries answer from the index, so they now lie about who did it…
    assert.equal((await c.queryRecords({ actor: "user:nobody" })).records.length, 1);
    // …and verify says so.
    let verdict = await verify();
    assert.equal(verdict.ok, false);
    assert.equal(verdict.firstBrokenSequence, 3n);
    assert.match(
      verdict.problem,
      /query index row of record 3 was altered: actor is "user:nobody" in the index but "service:storage" in the trail/,
    );
    db.prepare("UPDATE records SET actor = 'service:storage' WHERE seq = 3").run();
    assert.equal((await verify()).ok, true);

    const { event_json } = db.prepare("SELECT event_json FROM records WHERE seq = 6").get() as { event_json: string };
    const edited = JSON.parse(event_json) as Record<string, unknown>;
    edited["resource"] = "sha256:innocent";
    db.prepare("UPDATE records SET event_json = ? WHERE seq = 6").run(JSON.stringify(edited));
    verdict = await verify();
    assert.equal(verdict.firstBrokenSequence, 6n);
    assert.match(verdict.problem, /row of record 6 was altered: event_json differs from the event in the trail/);
    db.prepare("UPDATE records SET event_json = 'not json' WHERE seq = 6").run();
    assert.match((await verify()).problem, /row of record 6 was altered: event_json is not an audit event/);
    db.prepare("UPDATE records SET event_json = ? WHERE seq = 6").run(event_json);
    assert.equal((await verify()).ok, true);
  });

  test("verify refuses a starting sequence beyond the trail, and verifies from the middle", async () => {
    for (const since of [10_000n, 2n ** 64n - 1n]) {
      await assert.rejects(
        c.verifyTrail({ sinceSequence: since }),
        (e: unknown) =>
          e instanceof NearhubError &&
          e.code === Code.InvalidArgument &&
          new RegExp(`since_sequence ${since} is after the last record \\(8\\)`).test(e.message),
      );
    }
    const verdict = await c.verifyTrail({ sinceSequence: 4n });
    assert.equal(verdict.ok, true, verdict.problem);
    assert.equal(verdict.recordsChecked, 5n);
    // Just past the end: nothing to check, and nothing wrong.
    assert.equal((await c.verifyTrail({ sinceSequence: 9n })).recordsChecked, 0n);
  });

  test("a deleted record (index row) is reported by verify, and so is a row the trail never held", async () => {
    const row = db.prepare("SELECT * FROM records WHERE seq = 5").get() as Record<string, unknown>;
    db.prepare("DELETE FROM records WHERE seq = 5").run();
    let verdict = await verify();
    assert.equal(verdict.ok, false);
    assert.equal(verdict.firstBrokenSequence, 5n);
    assert.match(verdict.problem, /record 5 is missing from the query index/);
    const columns = Object.keys(row);
    db.prepare(`INSERT INTO records (${columns.join(", ")}) VALUES (${columns.map((k) => `@${k}`).join(", ")})`).run(
      row,
    );
    assert.equal((await verify()).ok, true);

    // A row invented after the end of the trail, pointing at a real stream message.
    db.prepare(`INSERT INTO records (${columns.join(", ")}) VALUES (${columns.map((k) => `@${k}`).join(", ")})`).run({
      ...row,
      seq: 1000,
      event_id: "invented",
    });
    verdict = await verify();
    assert.equal(verdict.firstBrokenSequence, 1000n);
    assert.match(verdict.problem, /has a row for record 1000 that the trail does not hold/);
    db.prepare("DELETE FROM records WHERE seq = 1000").run();
    assert.equal((await verify()).ok, true);
  });

  test("a record published into the trail's subjects by anyone but the audit service is reported by verify", async () => {
    const names = new Names(ns);
    const stream = names.stream("AUDIT_TRAIL");
    const subject = names.subject("audittrail.record");
    // A plain NATS client: the chain is public, so the forgery links and hashes correctly.
    const nc = await connect({ servers: natsUrl, name: "audit-forger" });
    let forgedSequence: bigint;
    try {
      const jsm = await jetstreamManager(nc);
      const last = await jsm.streams.getMessage(stream, { last_by_subj: subject });
      assert.ok(last, "the trail holds records to forge after");
      const previous = fromJsonString(AuditRecordSchema, new TextDecoder().decode(last.data));
      forgedSequence = previous.sequence + 1n;
      const event = create(AuditEventSchema, {
        id: "forged-1",
        time: timestampNow(),
        service: "storage",
        actor: "user:alice",
        action: "repo.delete",
        resource: "github.com/acme/rocket",
        decision: Decision.ALLOW,
        outcome: Outcome.SUCCESS,
      });
      const now = Date.now();
      const forged = create(AuditRecordSchema, {
        sequence: forgedSequence,
        event,
        recordedAt: timestampFromMs(now),
        prevHash: previous.hash,
        hash: recordHash(previous.hash, forgedSequence, now, event),
        // Copied from the real record: a signature does not carry over to another hash.
        keyId: previous.keyId,
        signature: previous.signature,
      });
      const js = jetstream(nc);
      await js.publish(subject, toJsonString(AuditRecordSchema, forged), {
        msgID: "forged-1",
        expect: { lastSubjectSequence: last.seq },
      });
      // The stream takes no other subject, so nothing can hide beside records and checkpoints.
      await assert.rejects(
        js.publish(names.subject("audittrail.extra"), "{}"),
        /no responders|503|jetstream is not enabled/i,
      );
    } finally {
      await nc.close();
    }
    let verdict = await verify();
    assert.equal(verdict.ok, false);
    assert.equal(verdict.firstBrokenSequence, forgedSequence);
    assert.match(verdict.problem, new RegExp(`record ${forgedSequence} has an invalid signature`));

    // The service keeps recording after the forgery (its append expected another chain end)…
    await publishAudit(bus, "storage", { action: "blob.put", resource: "sha256:after-forgery" });
    const after = await eventually(
      async () => {
        const { records } = await c.queryRecords({ resource: "sha256:after-forgery" });
        return records[0];
      },
      20_000,
      "the record after the forgery",
    );
    assert.equal(after.sequence, forgedSequence + 1n);
    // The forged event is in the trail for verify to name, but queries do not present it as fact.
    assert.equal((await c.queryRecords({ resource: "github.com/acme/rocket" })).records.length, 0);
    // …and verify keeps naming the forged record.
    verdict = await verify();
    assert.equal(verdict.firstBrokenSequence, forgedSequence);

    const text = await (await fetch(`http://127.0.0.1:${audit.metricsPort}/metrics`)).text();
    const failures = /^nearhub_audit_verify_failures_total(?:\{[^}]*\})? (\d+)/m.exec(text);
    assert.ok(failures, "nearhub_audit_verify_failures_total is exported");
    // Six failed verifications in this suite.
    assert.ok(Number(failures[1]) >= 6, `verify failures: ${String(failures[1])}`);
  });
});

describe("audit trail at volume: 10,000 audited operations, then verify", () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let audit: ServiceHost;
  let bus: Bus;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    audit = await startAudit(parseEnv("audit", auditEnv, serviceEnv(natsUrl, ns, dir.path)));
    bus = await Bus.connect({
      url: natsUrl,
      name: "audit-volume-test",
      source: "nearhub/test",
      names: new Names(ns),
      logger: silentLogger,
    });
  });

  after(async () => {
    await bus?.drain();
    await audit?.stop();
    await deleteNamespace(natsUrl, ns);
    await dir.cleanup();
  });

  test("10,000 audited operations are each recorded once and verify passes", { timeout: 600_000 }, async (t) => {
    const total = 10_000;
    const started = performance.now();
    // As fast as the bus allows: 64 publishes in flight, each awaiting its ack.
    let next = 0;
    const publisher = async () => {
      for (let i = next++; i < total; i = next++) {
        await publishAudit(bus, i % 2 ? "storage" : "sync", {
          action: i % 2 ? "blob.put" : "mirror.sync",
          resource: `github.com/acme/r${i}`,
          decision: i % 10 === 0 ? Decision.DENY : Decision.ALLOW,
        });
      }
    };
    await Promise.all(Array.from({ length: 64 }, publisher));
    const published = performance.now();
    t.diagnostic(`published ${total} in ${((published - started) / 1000).toFixed(1)} s`);
    // Verifying 10,000 records on a loaded machine can outlast the default 10 s deadline.
    const c = createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, {
      metadata: adminAuth(ns),
      timeoutMs: 300_000,
    });
    try {
      const last = await eventually(
        async () => {
          const { records } = await c.queryRecords({ cursor: String(total - 1), pageSize: 10 });
          return records.length > 0 ? records : undefined;
        },
        540_000,
        `record ${total}`,
      );
      const recorded = performance.now();
      t.diagnostic(`all recorded ${((recorded - started) / 1000).toFixed(1)} s after the first publish`);
      assert.deepEqual(
        last.map((r) => r.sequence),
        [BigInt(total)],
        "exactly one record per operation",
      );
      const verdict = await c.verifyTrail({});
      const verified = performance.now();
      assert.equal(verdict.ok, true, verdict.problem);
      assert.equal(verdict.recordsChecked, BigInt(total));
      assert.equal(verdict.lastSequence, BigInt(total));
      assert.ok(verdict.checkpointsChecked >= 10n, `a checkpoint every 1000 records: ${verdict.checkpointsChecked}`);
      const denied = await c.queryRecords({ decision: Decision.DENY, pageSize: 1000 });
      assert.equal(denied.records.length, total / 10);
      t.diagnostic(
        `verify of ${total} records took ${((verified - recorded) / 1000).toFixed(1)} s; ` +
          `loadavg ${(await readFile("/proc/loadavg", "utf8")).trim()}`,
      );
    } finally {
      c.$close();
    }
  });
});
