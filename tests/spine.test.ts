import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import {
  Code,
  NearhubError,
  createClient,
  parseEnv,
  startTelemetry,
  type ServiceHost,
  type Telemetry,
} from "@nearhub/platform";
import { AuditService, Decision } from "@nearhub/proto/audit";
import { SearchService, DocumentKind } from "@nearhub/proto/search";
import { SyncService } from "@nearhub/proto/sync";
import { auditEnv, startAudit } from "@nearhub/audit";
import { indexingEnv, startIndexing } from "@nearhub/indexing";
import { startSync, syncEnv } from "@nearhub/sync";
import {
  deleteNamespace,
  eventually,
  nats,
  serviceEnv,
  tempDir,
  uniqueNamespace,
  adminAuth,
  adminToken,
} from "./harness.js";

// One trace must cover: the caller → sync's gRPC handler → the event it publishes →
// indexing's consumer (and audit's), across the real NATS server.
describe("spine: gRPC call → event → consumer, in one trace", () => {
  const exporter = new InMemorySpanExporter();
  let telemetry: Telemetry;
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let sync: ServiceHost;
  let indexing: ServiceHost;
  let audit: ServiceHost;

  before(async () => {
    telemetry = startTelemetry({ serviceName: "spine-test", spanProcessors: [new SimpleSpanProcessor(exporter)] });
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const env = serviceEnv(natsUrl, ns, dir.path, { NEARHUB_GIT_UPSTREAMS: "github.com=http://127.0.0.1:1" });
    [sync, indexing, audit] = await Promise.all([
      startSync(parseEnv("sync", syncEnv, env)),
      startIndexing(parseEnv("indexing", indexingEnv, env)),
      startAudit(parseEnv("audit", auditEnv, env)),
    ]);
  });

  after(async () => {
    await Promise.all([sync?.stop(), indexing?.stop(), audit?.stop()]);
    await deleteNamespace(natsUrl, ns);
    await telemetry.shutdown();
    await dir.cleanup();
  });

  test("the consumer's span is in the caller's trace, under the producer's span", async () => {
    const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { metadata: adminAuth(ns) });
    const search = createClient(SearchService, `127.0.0.1:${indexing.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      const traceId = await trace.getTracer("test").startActiveSpan("test-root", async (root) => {
        const response = await client.addMirror({ name: "github.com/acme/rocket", intervalSeconds: 120 });
        assert.equal(response.created, true);
        assert.equal(response.mirror?.name, "github.com/acme/rocket");
        root.end();
        return root.spanContext().traceId;
      });

      // The indexing consumer picks the event up from JetStream.
      const found = await eventually(
        async () => {
          const { hits } = await search.search({ query: "rocket", kind: DocumentKind.GIT_REPO });
          return hits.length > 0 ? hits : undefined;
        },
        10_000,
        "the mirror to be indexed",
      );
      assert.equal(found[0]?.id, "github.com/acme/rocket");

      const spans = await eventually(
        async () => {
          const all = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
          return all.some((s) => s.kind === SpanKind.CONSUMER && s.name === "process nearhub.mirror.git.added")
            ? all
            : undefined;
        },
        5000,
        "the consumer span",
      );
      const byKind = (kind: SpanKind, name: string): ReadableSpan => {
        const span = spans.find((s) => s.kind === kind && s.name === name);
        assert.ok(span, `no ${SpanKind[kind]} span named ${name}; have ${spans.map((s) => s.name).join(", ")}`);
        return span;
      };
      const rootSpan = spans.find((s) => s.name === "test-root");
      const clientSpan = byKind(SpanKind.CLIENT, "nearhub.sync.v1.SyncService/AddMirror");
      const serverSpan = byKind(SpanKind.SERVER, "nearhub.sync.v1.SyncService/AddMirror");
      const producer = byKind(SpanKind.PRODUCER, "publish nearhub.mirror.git.added");
      const consumers = spans.filter(
        (s) => s.kind === SpanKind.CONSUMER && s.name === "process nearhub.mirror.git.added",
      );
      assert.ok(rootSpan);
      const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;
      assert.equal(parentOf(clientSpan), rootSpan.spanContext().spanId);
      assert.equal(parentOf(serverSpan), clientSpan.spanContext().spanId);
      assert.equal(parentOf(producer), serverSpan.spanContext().spanId);
      assert.ok(consumers.length >= 1);
      for (const consumer of consumers) assert.equal(parentOf(consumer), producer.spanContext().spanId);
    } finally {
      client.$close();
      search.$close();
    }
  });

  test("every mutation leaves an audit record with the caller and the trace", async () => {
    const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { metadata: adminAuth(ns) });
    const auditClient = createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      await client.addMirror({ name: "github.com/acme/audited" });
      await client.removeMirror({ name: "github.com/acme/audited" });
      const records = await eventually(
        async () => {
          const { records } = await auditClient.queryRecords({ resource: "github.com/acme/audited" });
          return records.length >= 2 ? records : undefined;
        },
        10_000,
        "two audit records",
      );
      assert.deepEqual(
        records.map((r) => r.event?.action),
        ["mirror.add", "mirror.remove"],
      );
      for (const r of records) {
        // The caller: the namespace's bootstrap admin token (nhp_<id>_<secret> → token:<id>).
        assert.equal(r.event?.actor, `token:${adminToken(ns).slice(4, 20)}`);
        assert.equal(r.event?.decision, Decision.ALLOW);
        assert.equal(r.event?.service, "sync");
        assert.match(r.event?.traceId ?? "", /^[0-9a-f]{32}$/);
      }
    } finally {
      client.$close();
      auditClient.$close();
    }
  });

  test("removing a mirror removes it from search; replays do not resurrect it", async () => {
    const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { metadata: adminAuth(ns) });
    const search = createClient(SearchService, `127.0.0.1:${indexing.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      await client.addMirror({ name: "github.com/acme/ephemeral" });
      await eventually(async () =>
        (await search.search({ query: "ephemeral" })).hits.length === 1 ? true : undefined,
      );
      assert.equal((await client.removeMirror({ name: "github.com/acme/ephemeral" })).removed, true);
      await eventually(async () =>
        (await search.search({ query: "ephemeral" })).hits.length === 0 ? true : undefined,
      );
      assert.equal((await client.removeMirror({ name: "github.com/acme/ephemeral" })).removed, false);
    } finally {
      client.$close();
      search.$close();
    }
  });

  test("bad input is refused with a message that says what to fix", async () => {
    const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      const cases: Array<[Parameters<typeof client.addMirror>[0], Code, RegExp]> = [
        [{ name: "github.com/../etc" }, Code.InvalidArgument, /owner "\.\." is not a valid name/],
        [{ name: "github.com/a/b/c" }, Code.InvalidArgument, /must be <upstream>\/<owner>\/<repo>/],
        [
          { name: "evil.example/a/b" },
          Code.InvalidArgument,
          /unknown upstream "evil.example"; configured upstreams: github.com/,
        ],
        [
          { name: "github.com/a/b", intervalSeconds: 10 },
          Code.InvalidArgument,
          /mirror interval 10s is below the 60s minimum/,
        ],
        [{ name: "github.com/a/b", intervalSeconds: 100_000 }, Code.InvalidArgument, /above the 86400s/],
        [
          { name: "github.com/a/b", refs: "heads;rm -rf" },
          Code.InvalidArgument,
          /must be heads, tags, heads,tags or all/,
        ],
        [{ name: "x".repeat(100_000) }, Code.InvalidArgument, /must be <upstream>/],
      ];
      for (const [request, code, message] of cases) {
        await assert.rejects(client.addMirror(request), (error: unknown) => {
          assert.ok(error instanceof NearhubError);
          assert.equal(error.code, code, `${JSON.stringify(request).slice(0, 80)} → ${error.message}`);
          assert.match(error.message, message);
          return true;
        });
      }
      await assert.rejects(
        client.getMirror({ name: "github.com/nobody/nothing" }),
        (e: NearhubError) => e.code === Code.NotFound && /nearhub mirror add/.test(e.message),
      );
      // An identical add is idempotent, not an error.
      const first = await client.addMirror({ name: "github.com/acme/twice" });
      const second = await client.addMirror({ name: "github.com/acme/twice.git" });
      assert.equal(first.created, true);
      assert.equal(second.created, false);
      assert.equal(second.mirror?.generation, first.mirror?.generation);
    } finally {
      client.$close();
    }
  });
});
