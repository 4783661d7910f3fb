import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { EchoService } from "@nearhub/proto/echo";
import { Health } from "@nearhub/proto/health";
import { currentPrincipal } from "./auth/context.js";
import { Code, NearhubError } from "./errors.js";
import { silentLogger } from "./logger.js";
import { ServiceMetrics } from "./metrics.js";
import { createClient } from "./rpc-client.js";
import { RpcServer, type RpcServerOptions } from "./rpc-server.js";
import type { CallContext, ServiceImpl } from "./rpc-types.js";
import { startTelemetry, type Telemetry } from "./telemetry.js";

const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;
before(() => {
  telemetry = startTelemetry({ serviceName: "rpc-server-test", spanProcessors: [new SimpleSpanProcessor(exporter)] });
});
after(async () => {
  await telemetry.shutdown();
});

/** What the echo handlers saw, for assertions. */
interface Seen {
  calls: number;
  contexts: CallContext[];
}

function echoImpl(
  seen: Seen,
  overrides: Partial<ServiceImpl<typeof EchoService>> = {},
): ServiceImpl<typeof EchoService> {
  return {
    async echo(request, ctx) {
      seen.calls++;
      seen.contexts.push(ctx);
      if (request.delayMs > 0) await sleep(request.delayMs, undefined, { signal: ctx.signal }).catch(() => undefined);
      if (request.failWithCode !== 0) {
        throw new NearhubError(request.failWithCode, `asked to fail with code ${request.failWithCode}`);
      }
      return {
        text: request.text,
        traceId: trace.getActiveSpan()?.spanContext().traceId ?? "",
        principal: ctx.principal.subject,
      };
    },
    async *echoServerStream(request, ctx) {
      seen.contexts.push(ctx);
      for (let index = 0; index < request.count; index++) yield { text: request.text, index };
    },
    async echoClientStream(requests, ctx) {
      seen.contexts.push(ctx);
      const texts: string[] = [];
      for await (const r of requests) texts.push(r.text);
      return { texts };
    },
    async *echoBidiStream(requests, ctx) {
      seen.contexts.push(ctx);
      for await (const r of requests) yield { text: r.text.toUpperCase() };
    },
    ...overrides,
  };
}

interface Running {
  server: RpcServer;
  metrics: ServiceMetrics;
  address: string;
  seen: Seen;
  close(): Promise<void>;
}

async function startEcho(
  options: Partial<RpcServerOptions> = {},
  overrides: Partial<ServiceImpl<typeof EchoService>> = {},
): Promise<Running> {
  const metrics = new ServiceMetrics("test");
  const seen: Seen = { calls: 0, contexts: [] };
  const server = new RpcServer({ service: "test", logger: silentLogger, metrics, ...options });
  server.addService(EchoService, echoImpl(seen, overrides));
  const port = await server.listen("127.0.0.1", 0);
  return { server, metrics, address: `127.0.0.1:${port}`, seen, close: () => server.shutdown(1000) };
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

async function histogramCount(metrics: ServiceMetrics, labels: Record<string, string>): Promise<number> {
  const metric = metrics.registry.getSingleMetric("nearhub_rpc_server_duration_seconds");
  assert.ok(metric, "the RPC server histogram is registered");
  const values = (await metric.get()).values;
  return values
    .filter((v) => (v as { metricName?: string }).metricName === "nearhub_rpc_server_duration_seconds_count")
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

describe("RpcServer with the echo service", () => {
  let running: Running;
  let client: ReturnType<typeof createClient<typeof EchoService>>;
  before(async () => {
    running = await startEcho();
    client = createClient(EchoService, running.address, { timeoutMs: 5000 });
  });
  after(async () => {
    client.$close();
    await running.close();
  });

  test("listen returns the bound port and port reports it", () => {
    assert.ok(running.server.port > 0);
    assert.equal(running.address, `127.0.0.1:${running.server.port}`);
  });

  test("unary call", async () => {
    const response = await client.echo({ text: "hello" });
    assert.equal(response.text, "hello");
    assert.equal(response.principal, "anonymous");
  });

  test("server streaming call", async () => {
    const got: Array<[string, number]> = [];
    for await (const r of client.echoServerStream({ text: "s", count: 5 })) got.push([r.text, r.index]);
    assert.deepEqual(got, [
      ["s", 0],
      ["s", 1],
      ["s", 2],
      ["s", 3],
      ["s", 4],
    ]);
  });

  test("client streaming call", async () => {
    async function* requests() {
      for (const text of ["a", "b", "c"]) yield { text };
    }
    const response = await client.echoClientStream(requests());
    assert.deepEqual(response.texts, ["a", "b", "c"]);
  });

  test("bidi streaming call", async () => {
    async function* requests() {
      for (const text of ["x", "y"]) yield { text };
    }
    const got: string[] = [];
    for await (const r of client.echoBidiStream(requests())) got.push(r.text);
    assert.deepEqual(got, ["X", "Y"]);
  });

  test("bidi streaming interleaves: each answer arrives before the next request is sent", async () => {
    const answers: string[] = [];
    let answered: (() => void) | undefined;
    async function* requests() {
      for (const text of ["one", "two", "three"]) {
        const next = new Promise<void>((resolve) => (answered = resolve));
        yield { text };
        await next;
      }
    }
    for await (const r of client.echoBidiStream(requests())) {
      answers.push(r.text);
      answered?.();
    }
    assert.deepEqual(answers, ["ONE", "TWO", "THREE"]);
  });

  test("the call context names the method and service and carries metadata", async () => {
    const before = running.seen.contexts.length;
    await client.echo({ text: "ctx" }, { metadata: { "x-request-id": "r-42" } });
    const ctx = running.seen.contexts[before];
    assert.ok(ctx);
    assert.equal(ctx.method, "nearhub.common.v1.EchoService/Echo");
    assert.equal(ctx.service, "test");
    assert.deepEqual(ctx.metadata.get("x-request-id"), ["r-42"]);
    assert.match(ctx.peer, /127\.0\.0\.1/);
    assert.ok(ctx.deadline instanceof Date, "the client always sets a deadline");
  });

  test("a NearhubError from the handler reaches the client with its code and message", async () => {
    const error = await rejection(client.echo({ text: "x", failWithCode: Code.NotFound }));
    assert.equal(error.code, Code.NotFound);
    assert.equal(error.rawMessage, "asked to fail with code 5");
  });

  test("every status code a handler throws reaches the client unchanged", async () => {
    for (const code of [Code.InvalidArgument, Code.PermissionDenied, Code.FailedPrecondition, Code.Aborted]) {
      const error = await rejection(client.echo({ failWithCode: code }));
      assert.equal(error.code, code);
    }
  });

  test("the RED histogram counts calls by method and status code name", async () => {
    const okBefore = await histogramCount(running.metrics, { method: "Echo", code: "ok" });
    const notFoundBefore = await histogramCount(running.metrics, { method: "Echo", code: "not_found" });
    await client.echo({ text: "m" });
    await rejection(client.echo({ failWithCode: Code.NotFound }));
    assert.equal(await histogramCount(running.metrics, { method: "Echo", code: "ok" }), okBefore + 1);
    assert.equal(await histogramCount(running.metrics, { method: "Echo", code: "not_found" }), notFoundBefore + 1);
    const text = await running.metrics.registry.metrics();
    assert.match(text, /nearhub_rpc_server_duration_seconds_count\{[^}]*method="Echo"[^}]*code="not_found"[^}]*\} \d+/);
  });

  test("streams are counted too", async () => {
    const before = await histogramCount(running.metrics, { method: "EchoServerStream", code: "ok" });
    for await (const r of client.echoServerStream({ text: "s", count: 2 })) assert.equal(r.text, "s");
    assert.equal(await histogramCount(running.metrics, { method: "EchoServerStream", code: "ok" }), before + 1);
  });

  test("an unknown method path is UNIMPLEMENTED", async () => {
    const raw = new grpc.Client(running.address, grpc.credentials.createInsecure());
    try {
      const status = await new Promise<grpc.ServiceError>((resolve, reject) => {
        raw.makeUnaryRequest(
          "/nearhub.common.v1.EchoService/NoSuchMethod",
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.alloc(0),
          (error) => (error ? resolve(error) : reject(new Error("the call should fail"))),
        );
      });
      assert.equal(status.code, grpc.status.UNIMPLEMENTED);
    } finally {
      raw.close();
    }
  });

  test("a service that is not registered is UNIMPLEMENTED through the typed client", async () => {
    const health = createClient(Health, running.address);
    try {
      const error = await rejection(health.check({ service: "" }));
      assert.equal(error.code, Code.Unimplemented);
    } finally {
      health.$close();
    }
  });

  test("garbage bytes for a known method fail without reaching the handler", async () => {
    const raw = new grpc.Client(running.address, grpc.credentials.createInsecure());
    const calls = running.seen.calls;
    try {
      const status = await new Promise<grpc.ServiceError>((resolve, reject) => {
        raw.makeUnaryRequest(
          "/nearhub.common.v1.EchoService/Echo",
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([0x0a, 0xff, 0xff, 0xff]),
          (error) => (error ? resolve(error) : reject(new Error("the call should fail"))),
        );
      });
      assert.equal(status.code, grpc.status.INTERNAL);
      assert.equal(running.seen.calls, calls);
    } finally {
      raw.close();
    }
  });
});

describe("RpcServer error handling", () => {
  test("a plain Error becomes INTERNAL and its message does not leak", async () => {
    const running = await startEcho(
      {},
      {
        echo: async () => {
          throw new Error("connect to postgres://admin:hunter2@db failed");
        },
      },
    );
    const client = createClient(EchoService, running.address);
    const tracer = trace.getTracer("rpc-server-test");
    try {
      const { error, traceId } = await tracer.startActiveSpan("test root", async (root) => {
        try {
          return { error: await rejection(client.echo({ text: "x" })), traceId: root.spanContext().traceId };
        } finally {
          root.end();
        }
      });
      assert.equal(error.code, Code.Internal);
      assert.doesNotMatch(error.message, /hunter2|postgres/);
      assert.match(error.message, /internal error/);
      assert.equal(await histogramCount(running.metrics, { method: "Echo", code: "internal" }), 1);
      const serverSpan = exporter
        .getFinishedSpans()
        .find((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
      assert.equal(serverSpan?.attributes["rpc.grpc.status_code"], Code.Internal, "the span shows the status sent");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("a plain Error in a stream becomes INTERNAL without leaking", async () => {
    const running = await startEcho(
      {},
      {
        // eslint-disable-next-line require-yield
        echoServerStream: async function* () {
          throw new Error("secret path /var/lib/secret.key unreadable");
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(
        (async () => {
          for await (const r of client.echoServerStream({ count: 1 })) assert.fail(`unexpected ${r.text}`);
        })(),
      );
      assert.equal(error.code, Code.Internal);
      assert.doesNotMatch(error.message, /secret/);
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("a NearhubError thrown mid-stream reaches the client after the messages sent so far", async () => {
    const running = await startEcho(
      {},
      {
        echoServerStream: async function* (request) {
          yield { text: request.text, index: 0 };
          throw new NearhubError(Code.ResourceExhausted, "quota of 1 message used up");
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      const got: number[] = [];
      const error = await rejection(
        (async () => {
          for await (const r of client.echoServerStream({ text: "q", count: 5 })) got.push(r.index);
        })(),
      );
      assert.deepEqual(got, [0]);
      assert.equal(error.code, Code.ResourceExhausted);
      assert.equal(error.rawMessage, "quota of 1 message used up");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("a bidi handler that fails after reading every request sends its status", async () => {
    const running = await startEcho(
      {},
      {
        echoBidiStream: async function* (requests) {
          let n = 0;
          for await (const r of requests) {
            n++;
            yield { text: r.text };
          }
          throw new NearhubError(Code.OutOfRange, `${n} requests is too many`);
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      async function* requests() {
        yield { text: "a" };
        yield { text: "b" };
      }
      const got: string[] = [];
      const error = await rejection(
        (async () => {
          for await (const r of client.echoBidiStream(requests())) got.push(r.text);
        })(),
      );
      assert.deepEqual(got, ["a", "b"]);
      assert.equal(error.code, Code.OutOfRange);
      assert.equal(error.rawMessage, "2 requests is too many");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("a client-streaming handler that refuses early fails the call while the client still sends", async () => {
    const running = await startEcho(
      {},
      {
        echoClientStream: async () => {
          throw new NearhubError(Code.InvalidArgument, "no uploads today");
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      async function* requests() {
        for (let i = 0; i < 50; i++) {
          yield { text: `chunk ${i}` };
          await sleep(1);
        }
      }
      const error = await rejection(client.echoClientStream(requests()));
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.rawMessage, "no uploads today");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("addService refuses an implementation that misses a method", () => {
    const server = new RpcServer({ service: "test", logger: silentLogger, metrics: new ServiceMetrics("test") });
    const impl = echoImpl({ calls: 0, contexts: [] }) as Partial<ServiceImpl<typeof EchoService>>;
    delete impl.echoBidiStream;
    assert.throws(
      () => server.addService(EchoService, impl as ServiceImpl<typeof EchoService>),
      /nearhub\.common\.v1\.EchoService: no handler for EchoBidiStream/,
    );
  });

  test("listen on a port in use fails with UNAVAILABLE naming the address", async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as { port: number }).port;
    const server = new RpcServer({ service: "test", logger: silentLogger, metrics: new ServiceMetrics("test") });
    server.addService(EchoService, echoImpl({ calls: 0, contexts: [] }));
    try {
      const error = await rejection(server.listen("127.0.0.1", port));
      assert.equal(error.code, Code.Unavailable);
      assert.match(error.message, new RegExp(`cannot listen for gRPC on 127\\.0\\.0\\.1:${port}`));
    } finally {
      await server.shutdown(100);
      await new Promise((resolve) => blocker.close(resolve));
    }
  });
});

describe("RpcServer deadlines and cancellation", () => {
  test("a client deadline shorter than the handler gives DEADLINE_EXCEEDED and aborts ctx.signal", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(client.echo({ text: "slow", delayMs: 5000 }, { timeoutMs: 150 }));
      assert.equal(error.code, Code.DeadlineExceeded);
      assert.match(error.message, /EchoService\/Echo/);
      const ctx = running.seen.contexts[0];
      assert.ok(ctx, "the handler ran");
      if (!ctx.signal.aborted)
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      assert.equal(ctx.signal.aborted, true);
      assert.equal(ctx.aborted, true, "aborted reads the same without the signal");
      assert.ok(ctx.signal.reason instanceof NearhubError);
      assert.ok([Code.DeadlineExceeded, Code.Cancelled].includes(ctx.signal.reason.code));
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("the server ends the call at the deadline even when the handler ignores its signal", async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let handlerCtx: CallContext | undefined;
    const running = await startEcho(
      {},
      {
        echo: async (_request, ctx) => {
          handlerCtx = ctx;
          await released;
          return { text: "too late" };
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(client.echo({ text: "x" }, { timeoutMs: 100 }));
      assert.equal(error.code, Code.DeadlineExceeded);
      // The signal is made on first use: read only now, it is already aborted.
      for (let i = 0; i < 100 && !handlerCtx?.aborted; i++) await sleep(10);
      assert.equal(handlerCtx?.aborted, true);
      assert.equal(handlerCtx?.signal.aborted, true);
      assert.ok(handlerCtx?.signal.reason instanceof NearhubError);
      // The server observed the call as failed, not as a late success.
      for (let i = 0; i < 100; i++) {
        const failed =
          (await histogramCount(running.metrics, { method: "Echo", code: "deadline_exceeded" })) +
          (await histogramCount(running.metrics, { method: "Echo", code: "cancelled" }));
        if (failed > 0) break;
        await sleep(20);
      }
      assert.equal(await histogramCount(running.metrics, { method: "Echo", code: "ok" }), 0);
    } finally {
      release();
      client.$close();
      await running.close();
    }
  });

  test("a client that stops reading a server stream cancels the handler", async () => {
    let handlerCtx: CallContext | undefined;
    const running = await startEcho(
      {},
      {
        echoServerStream: async function* (request, ctx) {
          handlerCtx = ctx;
          for (let index = 0; !ctx.signal.aborted; index++) {
            yield { text: request.text, index };
            await sleep(5);
          }
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      const got: number[] = [];
      for await (const r of client.echoServerStream({ text: "forever" })) {
        got.push(r.index);
        if (got.length === 3) break;
      }
      assert.deepEqual(got, [0, 1, 2]);
      const ctx = handlerCtx;
      assert.ok(ctx);
      if (!ctx.signal.aborted)
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      assert.ok(ctx.signal.reason instanceof NearhubError);
      assert.equal(ctx.signal.reason.code, Code.Cancelled);
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("an aborted client signal cancels a unary call", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address);
    try {
      const controller = new AbortController();
      const call = client.echo({ text: "x", delayMs: 5000 }, { signal: controller.signal });
      while (running.seen.contexts.length === 0) await sleep(5);
      controller.abort();
      const error = await rejection(call);
      assert.equal(error.code, Code.Cancelled);
      const ctx = running.seen.contexts[0];
      assert.ok(ctx);
      if (!ctx.signal.aborted)
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      assert.equal(ctx.signal.aborted, true);
    } finally {
      client.$close();
      await running.close();
    }
  });
});

describe("RpcServer authentication and interceptors", () => {
  const authenticate: RpcServerOptions["authenticate"] = async (ctx) => {
    const token = ctx.metadata.get("authorization")[0];
    if (token !== "Bearer good") {
      throw new NearhubError(Code.Unauthenticated, "send a valid bearer token in the authorization header");
    }
    return { subject: "user:alice", groups: ["admins"] };
  };

  test("a refused call never reaches the handler and the client gets UNAUTHENTICATED", async () => {
    const running = await startEcho({ authenticate });
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(client.echo({ text: "x" }, { metadata: { authorization: "Bearer bad" } }));
      assert.equal(error.code, Code.Unauthenticated);
      assert.equal(error.rawMessage, "send a valid bearer token in the authorization header");
      assert.equal(running.seen.calls, 0);
      assert.equal(await histogramCount(running.metrics, { code: "unauthenticated" }), 1);
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("the principal the hook returns is in ctx", async () => {
    const running = await startEcho({ authenticate });
    const client = createClient(EchoService, running.address, { metadata: { authorization: "Bearer good" } });
    try {
      const response = await client.echo({ text: "x" });
      assert.equal(response.principal, "user:alice");
      assert.deepEqual(running.seen.contexts[0]?.principal, { subject: "user:alice", groups: ["admins"] });
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("the handler runs as the principal, unless the service opts out of the principal context", async () => {
    for (const principalContext of [true, false]) {
      const metrics = new ServiceMetrics("test");
      let seen: string | undefined = "unset";
      const server: RpcServer = new RpcServer({ service: "test", logger: silentLogger, metrics, authenticate });
      server.addService(
        EchoService,
        echoImpl(
          { calls: 0, contexts: [] },
          {
            echo: async (request, ctx): Promise<{ text: string; principal: string }> => {
              seen = currentPrincipal()?.subject;
              return { text: request.text, principal: ctx.principal.subject };
            },
          },
        ),
        { principalContext },
      );
      const port: number = await server.listen("127.0.0.1", 0);
      const client = createClient(EchoService, `127.0.0.1:${port}`, { metadata: { authorization: "Bearer good" } });
      try {
        const response: { principal: string } = await client.echo({ text: "x" });
        assert.equal(response.principal, "user:alice", "ctx.principal is set either way");
        assert.equal(seen, principalContext ? "user:alice" : undefined);
      } finally {
        client.$close();
        await server.shutdown(1000);
      }
    }
  });

  test("authentication applies to streams too", async () => {
    const running = await startEcho({ authenticate });
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(
        (async () => {
          for await (const r of client.echoServerStream({ text: "x", count: 2 })) assert.fail(`unexpected ${r.text}`);
        })(),
      );
      assert.equal(error.code, Code.Unauthenticated);
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("interceptors run in order after authentication, around the handler", async () => {
    const order: string[] = [];
    const running = await startEcho(
      {
        authenticate: async () => {
          order.push("authenticate");
          return { subject: "service:test", groups: [] };
        },
        interceptors: [
          async (ctx, next) => {
            order.push(`outer:${ctx.principal.subject}`);
            await next();
            order.push("outer:after");
          },
          async (ctx, next) => {
            order.push(`inner:${ctx.method}`);
            await next();
            order.push("inner:after");
          },
        ],
      },
      {
        echo: async (request) => {
          order.push("handler");
          return { text: request.text };
        },
      },
    );
    const client = createClient(EchoService, running.address);
    try {
      assert.equal((await client.echo({ text: "i" })).text, "i");
      assert.deepEqual(order, [
        "authenticate",
        "outer:service:test",
        "inner:nearhub.common.v1.EchoService/Echo",
        "handler",
        "inner:after",
        "outer:after",
      ]);
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("an interceptor that throws refuses the call with its code", async () => {
    const running = await startEcho({
      interceptors: [
        async () => {
          throw new NearhubError(Code.PermissionDenied, "anonymous callers may not echo");
        },
      ],
    });
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(client.echo({ text: "x" }));
      assert.equal(error.code, Code.PermissionDenied);
      assert.equal(error.rawMessage, "anonymous callers may not echo");
      assert.equal(running.seen.calls, 0);
    } finally {
      client.$close();
      await running.close();
    }
  });
});

describe("RpcServer hostile input", () => {
  test("a request larger than maxMessageBytes is RESOURCE_EXHAUSTED and never reaches the handler", async () => {
    const running = await startEcho({ maxMessageBytes: 1024 });
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(client.echo({ text: "x".repeat(4096) }));
      assert.equal(error.code, Code.ResourceExhausted);
      assert.equal(running.seen.calls, 0);
      // A request within the limit still works on the same server.
      assert.equal((await client.echo({ text: "small" })).text, "small");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("a response larger than maxMessageBytes is not sent", async () => {
    const running = await startEcho({ maxMessageBytes: 1024 }, { echo: async () => ({ text: "y".repeat(4096) }) });
    const client = createClient(EchoService, running.address);
    try {
      const error = await rejection(client.echo({ text: "x" }));
      assert.equal(error.code, Code.ResourceExhausted);
    } finally {
      client.$close();
      await running.close();
    }
  });
});

describe("RpcServer tracing", () => {
  test("the server span continues the client's trace and the handler runs inside it", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address);
    const tracer = trace.getTracer("rpc-server-test");
    try {
      const { rootTraceId, rootSpanId, response } = await tracer.startActiveSpan("test root", async (root) => {
        try {
          return {
            rootTraceId: root.spanContext().traceId,
            rootSpanId: root.spanContext().spanId,
            response: await client.echo({ text: "traced" }),
          };
        } finally {
          root.end();
        }
      });
      const spans = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === rootTraceId);
      const clientSpan = spans.find((s) => s.kind === SpanKind.CLIENT);
      const serverSpan = spans.find((s) => s.kind === SpanKind.SERVER);
      assert.ok(clientSpan, "a client span was recorded");
      assert.ok(serverSpan, "a server span was recorded");
      assert.equal(clientSpan.name, "nearhub.common.v1.EchoService/Echo");
      assert.equal(serverSpan.name, "nearhub.common.v1.EchoService/Echo");
      assert.equal(clientSpan.parentSpanContext?.spanId, rootSpanId);
      assert.equal(serverSpan.parentSpanContext?.spanId, clientSpan.spanContext().spanId);
      assert.equal(serverSpan.parentSpanContext?.isRemote, true);
      assert.equal(serverSpan.attributes["rpc.system"], "grpc");
      assert.equal(serverSpan.attributes["rpc.method"], "Echo");
      assert.equal(response.traceId, rootTraceId, "the handler saw the server span as active");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("a failed call marks the server span with the status code", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address);
    const tracer = trace.getTracer("rpc-server-test");
    try {
      const traceId = await tracer.startActiveSpan("test root", async (root) => {
        try {
          await rejection(client.echo({ failWithCode: Code.NotFound }));
          return root.spanContext().traceId;
        } finally {
          root.end();
        }
      });
      const serverSpan = exporter
        .getFinishedSpans()
        .find((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
      assert.ok(serverSpan);
      assert.equal(serverSpan.attributes["rpc.grpc.status_code"], Code.NotFound);
      assert.equal(serverSpan.status.message, "asked to fail with code 5");
    } finally {
      client.$close();
      await running.close();
    }
  });

  test("streaming calls continue the trace as well", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address);
    const tracer = trace.getTracer("rpc-server-test");
    try {
      const traceId = await tracer.startActiveSpan("test root", async (root) => {
        try {
          async function* requests() {
            yield { text: "a" };
          }
          for await (const r of client.echoBidiStream(requests())) assert.equal(r.text, "A");
          return root.spanContext().traceId;
        } finally {
          root.end();
        }
      });
      const spans = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
      const clientSpan = spans.find((s) => s.kind === SpanKind.CLIENT);
      const serverSpan = spans.find((s) => s.kind === SpanKind.SERVER);
      assert.ok(clientSpan && serverSpan);
      assert.equal(serverSpan.name, "nearhub.common.v1.EchoService/EchoBidiStream");
      assert.equal(serverSpan.parentSpanContext?.spanId, clientSpan.spanContext().spanId);
    } finally {
      client.$close();
      await running.close();
    }
  });
});

describe("RpcServer shutdown", () => {
  test("after shutdown new calls fail with UNAVAILABLE", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address, { maxAttempts: 1 });
    try {
      assert.equal((await client.echo({ text: "up" })).text, "up");
      await running.close();
      const error = await rejection(client.echo({ text: "down" }));
      assert.equal(error.code, Code.Unavailable);
    } finally {
      client.$close();
    }
  });

  test("shutdown lets a running call finish", async () => {
    const running = await startEcho();
    const client = createClient(EchoService, running.address);
    try {
      const call = client.echo({ text: "in flight", delayMs: 200 });
      while (running.seen.calls === 0) await sleep(5);
      const stopping = running.server.shutdown(3000);
      assert.equal((await call).text, "in flight");
      await stopping;
    } finally {
      client.$close();
    }
  });
});
