import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { EchoService } from "@nearhub/proto/echo";
import { Health, HealthCheckResponse_ServingStatus } from "@nearhub/proto/health";
import { Code, NearhubError } from "./errors.js";
import { silentLogger } from "./logger.js";
import { ServiceMetrics } from "./metrics.js";
import { createClient } from "./rpc-client.js";
import { RpcServer } from "./rpc-server.js";
import type { CallContext, ServiceImpl } from "./rpc-types.js";
import { startTelemetry, type Telemetry } from "./telemetry.js";

const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;
before(() => {
  telemetry = startTelemetry({ serviceName: "rpc-client-test", spanProcessors: [new SimpleSpanProcessor(exporter)] });
});
after(async () => {
  await telemetry.shutdown();
});

const tracer = trace.getTracer("rpc-client-test");

interface Seen {
  echoCalls: number;
  contexts: CallContext[];
}

function echoImpl(
  seen: Seen,
  overrides: Partial<ServiceImpl<typeof EchoService>> = {},
): ServiceImpl<typeof EchoService> {
  return {
    async echo(request, ctx) {
      seen.echoCalls++;
      seen.contexts.push(ctx);
      if (request.delayMs > 0) await sleep(request.delayMs, undefined, { signal: ctx.signal }).catch(() => undefined);
      if (request.failWithCode !== 0) {
        throw new NearhubError(request.failWithCode, `asked to fail with code ${request.failWithCode}`);
      }
      return { text: request.text, principal: ctx.principal.subject };
    },
    async *echoServerStream(request) {
      for (let index = 0; index < request.count; index++) yield { text: `${request.text}${index}`, index };
    },
    async echoClientStream(requests, ctx) {
      seen.contexts.push(ctx);
      const texts: string[] = [];
      for await (const r of requests) texts.push(r.text);
      return { texts };
    },
    async *echoBidiStream(requests, ctx) {
      seen.contexts.push(ctx);
      for await (const r of requests) yield { text: `<${r.text}>` };
    },
    ...overrides,
  };
}

async function startServer(
  overrides: Partial<ServiceImpl<typeof EchoService>> = {},
  health?: ServiceImpl<typeof Health>,
): Promise<{ address: string; seen: Seen; close(timeoutMs?: number): Promise<void> }> {
  const seen: Seen = { echoCalls: 0, contexts: [] };
  const server = new RpcServer({ service: "test", logger: silentLogger, metrics: new ServiceMetrics("test") });
  server.addService(EchoService, echoImpl(seen, overrides));
  if (health) server.addService(Health, health);
  const port = await server.listen("127.0.0.1", 0);
  return { address: `127.0.0.1:${port}`, seen, close: (timeoutMs = 1000) => server.shutdown(timeoutMs) };
}

/** A port nothing listens on: bind one, then close it. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function rejection(promise: Promise<unknown>): Promise<NearhubError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof NearhubError, `expected a NearhubError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const m of stream) out.push(m);
  return out;
}

describe("createClient: the four kinds", () => {
  let server: Awaited<ReturnType<typeof startServer>>;
  let client: ReturnType<typeof createClient<typeof EchoService>>;
  before(async () => {
    server = await startServer();
    client = createClient(EchoService, server.address);
  });
  after(async () => {
    client.$close();
    await server.close();
  });

  test("unary returns the typed response message", async () => {
    const response = await client.echo({ text: "hi" });
    assert.equal(response.$typeName, "nearhub.common.v1.EchoResponse");
    assert.equal(response.text, "hi");
  });

  test("server streaming yields every message in order", async () => {
    const got = await collect(client.echoServerStream({ text: "n", count: 4 }));
    assert.deepEqual(
      got.map((r) => [r.text, r.index]),
      [
        ["n0", 0],
        ["n1", 1],
        ["n2", 2],
        ["n3", 3],
      ],
    );
  });

  test("server streaming with zero messages ends cleanly", async () => {
    assert.deepEqual(await collect(client.echoServerStream({ text: "n", count: 0 })), []);
  });

  test("client streaming sends every request, from any async iterable", async () => {
    async function* requests() {
      for (let i = 0; i < 100; i++) yield { text: String(i) };
    }
    const response = await client.echoClientStream(requests());
    assert.equal(response.texts.length, 100);
    assert.equal(response.texts[99], "99");
  });

  test("client streaming with no requests gets an empty answer", async () => {
    async function* none(): AsyncGenerator<{ text: string }> {}
    assert.deepEqual((await client.echoClientStream(none())).texts, []);
  });

  test("bidi streaming answers each request", async () => {
    async function* requests() {
      yield { text: "a" };
      yield { text: "b" };
    }
    assert.deepEqual(
      (await collect(client.echoBidiStream(requests()))).map((r) => r.text),
      ["<a>", "<b>"],
    );
  });

  test("client streaming pushes large volumes through flow control", async () => {
    const chunk = "z".repeat(64 * 1024);
    async function* requests() {
      for (let i = 0; i < 64; i++) yield { text: chunk };
    }
    const response = await client.echoClientStream(requests());
    assert.equal(response.texts.length, 64);
    assert.ok(response.texts.every((t) => t.length === chunk.length));
  });

  test("default metadata goes with every call and per-call metadata overrides it", async () => {
    const withDefaults = createClient(EchoService, server.address, {
      metadata: { "x-caller": "service:test", "x-tenant": "a" },
    });
    try {
      const before = server.seen.contexts.length;
      await withDefaults.echo({ text: "md" }, { metadata: { "x-tenant": "b" } });
      const ctx = server.seen.contexts[before];
      assert.ok(ctx);
      assert.deepEqual(ctx.metadata.get("x-caller"), ["service:test"]);
      assert.deepEqual(ctx.metadata.get("x-tenant"), ["b"]);
    } finally {
      withDefaults.$close();
    }
  });

  test("the client's default timeout becomes the server's deadline", async () => {
    const short = createClient(EchoService, server.address, { timeoutMs: 60_000 });
    try {
      const before = server.seen.contexts.length;
      const sent = Date.now();
      await short.echo({ text: "d" });
      const deadline = server.seen.contexts[before]?.deadline;
      assert.ok(deadline instanceof Date);
      assert.ok(deadline.getTime() > sent + 50_000 && deadline.getTime() <= sent + 61_000);
    } finally {
      short.$close();
    }
  });
});

describe("createClient: errors", () => {
  test("a server error keeps its code and message", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address);
    try {
      const error = await rejection(client.echo({ failWithCode: Code.AlreadyExists }));
      assert.equal(error.code, Code.AlreadyExists);
      assert.equal(error.rawMessage, "asked to fail with code 6");
      assert.ok(error.cause instanceof Error, "the grpc-js error is kept as cause");
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("a client-streaming call whose server goes away while the client waits for flow control fails, not hangs", async () => {
    // The server reads one request and then nothing: the client's writes back up; then the
    // server is cut off. Only the call's callback says so (a lost connection is no stream event).
    let firstSeen!: () => void;
    const first = new Promise<void>((resolve) => (firstSeen = resolve));
    const server = await startServer({
      async echoClientStream(requests) {
        for await (const _ of requests) {
          firstSeen();
          await sleep(60_000);
        }
        return { texts: [] };
      },
    });
    const client = createClient(EchoService, server.address, { timeoutMs: 5000 });
    let closed = false;
    async function* endless() {
      try {
        for (;;) yield { text: "x".repeat(1 << 20) };
      } finally {
        closed = true;
      }
    }
    try {
      const call = rejection(client.echoClientStream(endless()));
      await first;
      await sleep(200);
      await server.close(0);
      const error = await call;
      // Before, the process simply ran out of work and exited 0 with the upload unfinished.
      assert.ok([Code.Unavailable, Code.DeadlineExceeded].includes(error.code), error.message);
      assert.ok(closed, "the request source was closed");
    } finally {
      client.$close();
    }
  });

  test("a deadline names the method and the address", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address, { timeoutMs: 100 });
    try {
      const error = await rejection(client.echo({ text: "slow", delayMs: 3000 }));
      assert.equal(error.code, Code.DeadlineExceeded);
      assert.match(
        error.message,
        new RegExp(`nearhub\\.common\\.v1\\.EchoService/Echo at ${server.address.replace(/\./g, "\\.")}`),
      );
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("a streaming deadline fails the stream with DEADLINE_EXCEEDED", async () => {
    const server = await startServer({
      echoServerStream: async function* (request, ctx) {
        yield { text: request.text, index: 0 };
        await sleep(5000, undefined, { signal: ctx.signal }).catch(() => undefined);
      },
    });
    const client = createClient(EchoService, server.address, { streamTimeoutMs: 150 });
    try {
      const got: number[] = [];
      const error = await rejection(
        (async () => {
          for await (const r of client.echoServerStream({ text: "s" })) got.push(r.index);
        })(),
      );
      assert.deepEqual(got, [0]);
      assert.equal(error.code, Code.DeadlineExceeded);
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("an already aborted signal cancels the call at once", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address);
    try {
      const error = await rejection(client.echo({ text: "x" }, { signal: AbortSignal.abort() }));
      assert.equal(error.code, Code.Cancelled);
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("aborting a server stream cancels it", async () => {
    const server = await startServer({
      echoServerStream: async function* (request, ctx) {
        for (let index = 0; !ctx.signal.aborted; index++) {
          yield { text: request.text, index };
          await sleep(5);
        }
      },
    });
    const client = createClient(EchoService, server.address);
    try {
      const controller = new AbortController();
      const got: number[] = [];
      const error = await rejection(
        (async () => {
          for await (const r of client.echoServerStream({ text: "s" }, { signal: controller.signal })) {
            got.push(r.index);
            if (got.length === 2) controller.abort();
          }
        })(),
      );
      assert.equal(error.code, Code.Cancelled);
      assert.ok(got.length >= 2);
    } finally {
      client.$close();
      await server.close();
    }
  });

  // grpc-js shows a client's cancel to the server as the end of the requests (grpc/grpc-node#2583),
  // so what these check is that the server's call ends now rather than at the far deadline.
  test(
    "a client-streaming request source that throws fails the call and ends it on the server",
    { timeout: 10_000 },
    async () => {
      let serverDone!: () => void;
      const ended = new Promise<void>((resolve) => (serverDone = resolve));
      const server = await startServer({
        echoClientStream: async (requests) => {
          try {
            for await (const r of requests) assert.equal(r.text, "first");
          } finally {
            serverDone();
          }
          return { texts: [] };
        },
      });
      const client = createClient(EchoService, server.address, { timeoutMs: 60_000 });
      try {
        async function* requests() {
          yield { text: "first" };
          await sleep(20);
          throw new Error("the upload source broke");
        }
        const error = await rejection(client.echoClientStream(requests()));
        assert.equal(error.rawMessage, "the upload source broke");
        await ended;
      } finally {
        client.$close();
        await server.close();
      }
    },
  );

  test("a bidi request source that throws fails the call and ends it on the server", { timeout: 10_000 }, async () => {
    let serverDone!: () => void;
    const ended = new Promise<void>((resolve) => (serverDone = resolve));
    const server = await startServer({
      echoBidiStream: async function* (requests) {
        try {
          for await (const r of requests) yield { text: r.text };
        } finally {
          serverDone();
        }
      },
    });
    const client = createClient(EchoService, server.address, { streamTimeoutMs: 60_000 });
    try {
      async function* requests() {
        yield { text: "first" };
        await sleep(20);
        throw new Error("the request source broke");
      }
      const error = await rejection(collect(client.echoBidiStream(requests())));
      assert.equal(error.rawMessage, "the request source broke");
      await ended;
    } finally {
      client.$close();
      await server.close();
    }
  });
});

describe("createClient: retries", () => {
  test("an idempotent unary method is retried on UNAVAILABLE, up to maxAttempts", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address);
    const twice = createClient(EchoService, server.address, { maxAttempts: 2 });
    try {
      const error = await rejection(client.echo({ failWithCode: Code.Unavailable }));
      assert.equal(error.code, Code.Unavailable);
      assert.equal(server.seen.echoCalls, 3, "3 attempts by default");
      await rejection(twice.echo({ failWithCode: Code.Unavailable }));
      assert.equal(server.seen.echoCalls, 5);
    } finally {
      client.$close();
      twice.$close();
      await server.close();
    }
  });

  test("other codes are not retried", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address);
    try {
      for (const code of [Code.NotFound, Code.Internal, Code.ResourceExhausted, Code.Aborted]) {
        await rejection(client.echo({ failWithCode: code }));
      }
      assert.equal(server.seen.echoCalls, 4);
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("a method without an idempotency level is never retried", async () => {
    let checks = 0;
    const server = await startServer(
      {},
      {
        check: async () => {
          checks++;
          throw new NearhubError(Code.Unavailable, "backend not ready");
        },
        watch: async function* () {
          yield { status: HealthCheckResponse_ServingStatus.SERVING };
        },
      },
    );
    const client = createClient(Health, server.address);
    try {
      const error = await rejection(client.check({ service: "" }));
      assert.equal(error.code, Code.Unavailable);
      assert.equal(checks, 1);
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("no retry is started that the deadline could not wait for", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address, { timeoutMs: 60 });
    try {
      await rejection(client.echo({ failWithCode: Code.Unavailable }));
      assert.equal(server.seen.echoCalls, 1, "the first backoff (100 ms) is longer than the deadline");
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("a closed port fails with UNAVAILABLE naming the address, after retrying", async () => {
    const port = await closedPort();
    const address = `127.0.0.1:${port}`;
    const client = createClient(EchoService, address);
    try {
      const { error, traceId } = await tracer.startActiveSpan("test root", async (root) => {
        try {
          return { error: await rejection(client.echo({ text: "anyone?" })), traceId: root.spanContext().traceId };
        } finally {
          root.end();
        }
      });
      assert.equal(error.code, Code.Unavailable);
      assert.ok(
        error.message.includes(`nearhub.common.v1.EchoService/Echo at ${address} is unavailable`),
        error.message,
      );
      assert.doesNotMatch(error.message, /Resolution note:\s*$/, "no empty trailer from grpc-js");
      const span = exporter
        .getFinishedSpans()
        .find((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.CLIENT);
      assert.ok(span);
      assert.deepEqual(
        span.events.filter((e) => e.name === "retry").map((e) => e.attributes?.["attempt"]),
        [1, 2],
      );
      assert.equal(span.status.code, SpanStatusCode.ERROR);
    } finally {
      client.$close();
    }
  });

  test("streams to a closed port fail with UNAVAILABLE and are not retried", async () => {
    const port = await closedPort();
    const client = createClient(EchoService, `127.0.0.1:${port}`);
    try {
      const error = await rejection(collect(client.echoServerStream({ text: "x", count: 1 })));
      assert.equal(error.code, Code.Unavailable);
      assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
      async function* one() {
        yield { text: "x" };
      }
      const clientStreamError = await rejection(client.echoClientStream(one()));
      assert.equal(clientStreamError.code, Code.Unavailable);
    } finally {
      client.$close();
    }
  });

  test("a retry reaches a server that came up in the meantime", async () => {
    const port = await closedPort();
    const client = createClient(EchoService, `127.0.0.1:${port}`, { maxAttempts: 6 });
    const seen: Seen = { echoCalls: 0, contexts: [] };
    const server = new RpcServer({ service: "test", logger: silentLogger, metrics: new ServiceMetrics("test") });
    server.addService(EchoService, echoImpl(seen));
    try {
      const call = client.echo({ text: "eventually" });
      // Bind after the first attempt has failed (it fails fast: connection refused).
      await sleep(30);
      await server.listen("127.0.0.1", port);
      assert.equal((await call).text, "eventually");
      assert.equal(seen.echoCalls, 1);
    } finally {
      client.$close();
      await server.shutdown(1000);
    }
  });
});

describe("createClient: metrics and tracing", () => {
  test("client calls are timed by method and status code name", async () => {
    const server = await startServer();
    const metrics = new ServiceMetrics("caller");
    const client = createClient(EchoService, server.address, { metrics });
    try {
      await client.echo({ text: "ok" });
      await rejection(client.echo({ failWithCode: Code.NotFound }));
      await collect(client.echoServerStream({ text: "s", count: 2 }));
      const values = (await metrics.rpcClientDuration.get()).values.filter(
        (v) => v.metricName === "nearhub_rpc_client_duration_seconds_count",
      );
      const count = (method: string, code: string) =>
        values.find((v) => v.labels["method"] === method && v.labels["code"] === code)?.value ?? 0;
      assert.equal(count("Echo", "ok"), 1);
      assert.equal(count("Echo", "not_found"), 1);
      assert.equal(count("EchoServerStream", "ok"), 1);
      assert.equal(values[0]?.labels["rpc_service"], "nearhub.common.v1.EchoService");
    } finally {
      client.$close();
      await server.close();
    }
  });

  test("each call is a CLIENT span under the caller's active span", async () => {
    const server = await startServer();
    const client = createClient(EchoService, server.address);
    try {
      const { traceId, rootSpanId } = await tracer.startActiveSpan("test root", async (root) => {
        try {
          await client.echo({ text: "t" });
          await collect(client.echoServerStream({ text: "t", count: 1 }));
          return { traceId: root.spanContext().traceId, rootSpanId: root.spanContext().spanId };
        } finally {
          root.end();
        }
      });
      const spans = exporter
        .getFinishedSpans()
        .filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.CLIENT);
      assert.deepEqual(spans.map((s) => s.name).sort(), [
        "nearhub.common.v1.EchoService/Echo",
        "nearhub.common.v1.EchoService/EchoServerStream",
      ]);
      for (const span of spans) {
        assert.equal(span.parentSpanContext?.spanId, rootSpanId);
        assert.equal(span.attributes["rpc.system"], "grpc");
        assert.equal(span.attributes["rpc.service"], "nearhub.common.v1.EchoService");
      }
      // The server continued each call's trace.
      const serverSpans = exporter
        .getFinishedSpans()
        .filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
      assert.equal(serverSpans.length, 2);
      const clientIds = new Set(spans.map((s) => s.spanContext().spanId));
      assert.ok(serverSpans.every((s) => clientIds.has(s.parentSpanContext?.spanId ?? "")));
    } finally {
      client.$close();
      await server.close();
    }
  });
});
