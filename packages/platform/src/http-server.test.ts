import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Agent, createServer, request, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { z } from "zod";
import { Code, NearhubError } from "./errors.js";
import { closeHttp, listenHttp, sendError, startOpsServer } from "./http-server.js";
import { ServiceMetrics } from "./metrics.js";

async function withOps(
  fn: (base: string, state: { ready: boolean }, metrics: ServiceMetrics) => Promise<void>,
): Promise<void> {
  const state = { ready: false };
  const metrics = new ServiceMetrics("test");
  const { server, port } = await startOpsServer({
    host: "127.0.0.1",
    port: 0,
    metrics,
    ready: () => state.ready,
    details: () => ({ nats: state.ready ? "connected" : "connecting" }),
  });
  try {
    assert.ok(port > 0);
    await fn(`http://127.0.0.1:${port}`, state, metrics);
  } finally {
    await closeHttp(server);
  }
}

describe("startOpsServer", () => {
  test("/metrics serves Prometheus text from the service's registry", async () => {
    await withOps(async (base, _state, metrics) => {
      metrics.ready.set(1);
      const response = await fetch(`${base}/metrics`);
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      const text = await response.text();
      assert.match(text, /^# TYPE nearhub_service_ready gauge$/m);
      assert.match(text, /^nearhub_service_ready\{service="test"\} 1$/m);
      // The scrape itself is timed under its route template.
      const again = await (await fetch(`${base}/metrics`)).text();
      assert.match(
        again,
        /nearhub_http_server_duration_seconds_count\{[^}]*route="\/metrics"[^}]*status="200"[^}]*\} [1-9]/,
      );
    });
  });

  test("/healthz answers 503 until the service is ready, then 200, with the details", async () => {
    await withOps(async (base, state) => {
      const before = await fetch(`${base}/healthz`);
      assert.equal(before.status, 503);
      assert.match(before.headers.get("content-type") ?? "", /^application\/json/);
      assert.deepEqual(await before.json(), { status: "NOT_SERVING", nats: "connecting" });
      state.ready = true;
      const after = await fetch(`${base}/healthz?verbose=1`);
      assert.equal(after.status, 200);
      assert.deepEqual(await after.json(), { status: "SERVING", nats: "connected" });
      state.ready = false;
      assert.equal((await fetch(`${base}/healthz`)).status, 503, "and 503 again while stopping");
    });
  });

  test("/livez is always 200", async () => {
    await withOps(async (base) => {
      const response = await fetch(`${base}/livez`);
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), { status: "alive" });
    });
  });

  test("an unknown route is a 404 JSON error naming the routes there are", async () => {
    await withOps(async (base) => {
      const response = await fetch(`${base}/admin?x=1`);
      assert.equal(response.status, 404);
      assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
      assert.deepEqual(await response.json(), { error: "no route /admin; try /metrics, /healthz or /livez" });
    });
  });

  test("other methods than GET and HEAD are 405 with Allow", async () => {
    await withOps(async (base) => {
      for (const method of ["POST", "PUT", "DELETE"]) {
        const response = await fetch(`${base}/metrics`, { method, body: method === "DELETE" ? null : "x" });
        assert.equal(response.status, 405, method);
        assert.equal(response.headers.get("allow"), "GET, HEAD");
        assert.deepEqual(await response.json(), { error: `${method} is not allowed here; use GET` });
      }
    });
  });

  test("HEAD answers with the status and no body", async () => {
    await withOps(async (base, state) => {
      state.ready = true;
      const response = await fetch(`${base}/healthz`, { method: "HEAD" });
      assert.equal(response.status, 200);
      assert.equal(await response.text(), "");
    });
  });

  test("a port in use fails with UNAVAILABLE and says so", async () => {
    await withOps(async (base) => {
      const port = Number(new URL(base).port);
      await assert.rejects(
        startOpsServer({ host: "127.0.0.1", port, metrics: new ServiceMetrics("other"), ready: () => true }),
        (error: unknown) => {
          assert.ok(error instanceof NearhubError);
          assert.equal(error.code, Code.Unavailable);
          assert.equal(
            error.message,
            `cannot listen for HTTP on 127.0.0.1:${port}: the port is in use (choose another port or stop what holds it)`,
          );
          assert.equal((error.cause as NodeJS.ErrnoException).code, "EADDRINUSE");
          return true;
        },
      );
    });
  });

  test("closeHttp stops the server and ends idle keep-alive connections", async () => {
    const { server, port } = await startOpsServer({
      host: "127.0.0.1",
      port: 0,
      metrics: new ServiceMetrics("test"),
      ready: () => true,
    });
    const agent = new Agent({ keepAlive: true });
    try {
      // A keep-alive request leaves an idle connection behind.
      const socket = await new Promise<Socket>((resolve, reject) => {
        const req = request({ host: "127.0.0.1", port, path: "/livez", agent });
        req.on("response", (res) => {
          res.resume();
          res.on("end", () => resolve(req.socket as Socket));
        });
        req.on("error", reject);
        req.end();
      });
      // The agent unrefs idle sockets; keep this one counted until the server ends it.
      socket.ref();
      const socketClosed = new Promise((resolve) => socket.once("close", resolve));
      await closeHttp(server);
      assert.equal(server.listening, false);
      await socketClosed;
      await assert.rejects(fetch(`http://127.0.0.1:${port}/livez`));
    } finally {
      agent.destroy();
    }
  });
});

describe("listenHttp", () => {
  test("an address that cannot be bound fails with the OS message", async () => {
    const server = createServer();
    await assert.rejects(listenHttp(server, "192.0.2.1", 0), (error: unknown) => {
      assert.ok(error instanceof NearhubError);
      assert.equal(error.code, Code.Unavailable);
      assert.match(error.message, /^cannot listen for HTTP on 192\.0\.2\.1:0: .*EADDRNOTAVAIL/);
      return true;
    });
  });
});

describe("sendError", () => {
  async function answer(error: unknown): Promise<{ status: number; body: unknown }> {
    const server: Server = createServer((_req, res) => sendError(res, error));
    await listenHttp(server, "127.0.0.1", 0);
    try {
      const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
      return { status: response.status, body: await response.json() };
    } finally {
      await closeHttp(server);
    }
  }

  test("a NearhubError gives its HTTP status and message", async () => {
    assert.deepEqual(await answer(new NearhubError(Code.NotFound, "mirror acme/x is not defined")), {
      status: 404,
      body: { error: "mirror acme/x is not defined" },
    });
    assert.equal((await answer(new NearhubError(Code.Unauthenticated, "log in"))).status, 401);
  });

  test("a validation error is a 400 naming the field", async () => {
    const parsed = z.object({ url: z.url() }).safeParse({ url: "nope" });
    const { status, body } = await answer(parsed.error);
    assert.equal(status, 400);
    assert.match((body as { error: string }).error, /^url: /);
  });

  test("an unexpected error is a 500 that does not leak its message", async () => {
    assert.deepEqual(await answer(new Error("password=hunter2")), {
      status: 500,
      body: { error: "internal error; the server log has the details" },
    });
  });

  test("a deliberate INTERNAL NearhubError keeps its message", async () => {
    assert.deepEqual(await answer(new NearhubError(Code.Internal, "index is corrupt; run nearhub reindex")), {
      status: 500,
      body: { error: "index is corrupt; run nearhub reindex" },
    });
  });
});
