import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { EchoService } from "@nearhub/proto/echo";
import { Health, HealthCheckResponse_ServingStatus as Status } from "@nearhub/proto/health";
import { Bus } from "./bus.js";
import { commonEnv, parseEnv, type CommonConfig } from "./config.js";
import { Code, NearhubError } from "./errors.js";
import { silentLogger } from "./logger.js";
import { Names } from "./names.js";
import { createClient } from "./rpc-client.js";
import type { ServiceImpl } from "./rpc-types.js";
import { ServiceHost } from "./service-host.js";

const NATS_URL = process.env["NATS_URL"] || "nats://127.0.0.1:4222";

const echo: ServiceImpl<typeof EchoService> = {
  echo: async (request, ctx) => ({ text: request.text, principal: ctx.principal.subject }),
  echoServerStream: async function* () {},
  echoClientStream: async () => ({ texts: [] }),
  echoBidiStream: async function* () {},
};

function config(namespace: string, overrides: Record<string, string> = {}): CommonConfig {
  return parseEnv("test", commonEnv, {
    NATS_URL,
    NEARHUB_NAMESPACE: namespace,
    NEARHUB_SHUTDOWN_TIMEOUT_MS: "1000",
    LOG_LEVEL: "silent",
    NEARHUB_INTERNAL_KEY: Buffer.alloc(32, 7).toString("base64"),
    ...overrides,
  });
}

function uniqueNamespace(): string {
  return `t${randomBytes(5).toString("hex")}`;
}

/** Removes every stream of a test namespace. */
async function deleteNamespace(namespace: string): Promise<void> {
  const names = new Names(namespace);
  const bus = await Bus.connect({
    url: NATS_URL,
    name: "cleanup",
    source: "nearhub/test",
    names,
    logger: silentLogger,
  });
  try {
    for await (const name of bus.jsm.streams.names()) {
      if (name.startsWith(`${namespace.toUpperCase()}_`) || name.startsWith(`KV_${namespace}_`)) {
        await bus.jsm.streams.delete(name);
      }
    }
  } finally {
    await bus.drain();
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

/** Whether something can bind the port now, i.e. the host let go of it. */
async function canBind(port: number): Promise<boolean> {
  const s = createServer();
  const bound = await new Promise<boolean>((resolve) => {
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => resolve(true));
  });
  if (bound) await new Promise((resolve) => s.close(resolve));
  return bound;
}

describe("ServiceHost", () => {
  test("starts, reports SERVING once set up, serves its services, and stops once", async () => {
    const namespace = uniqueNamespace();
    const stops: string[] = [];
    let duringSetup: { grpc: Status; http: number } | undefined;
    let host: ServiceHost | undefined;
    try {
      host = await ServiceHost.start(
        {
          name: "test",
          common: config(namespace),
          grpcPort: 0,
          logger: silentLogger,
          provisioning: (names) => ({
            streams: [{ name: names.stream("EVENTS"), subjects: [names.subject("events.>")] }],
            kv: [{ bucket: names.bucket("state") }],
          }),
        },
        async (h) => {
          h.serve(EchoService, echo);
          h.onStop(() => {
            stops.push("first registered");
          });
          h.onStop(async () => {
            stops.push("last registered");
            throw new Error("a failing stop callback does not stop the others");
          });
          // Before setup returns the host is up but not ready.
          const health = createClient(Health, `127.0.0.1:${h.grpcPort}`);
          try {
            duringSetup = {
              grpc: (await health.check({ service: "" })).status,
              http: (await fetch(`http://127.0.0.1:${h.metricsPort}/healthz`)).status,
            };
          } finally {
            health.$close();
          }
        },
      );
      assert.deepEqual(duringSetup, { grpc: Status.NOT_SERVING, http: 503 });
      assert.ok(host.grpcPort > 0);
      assert.ok(host.metricsPort > 0);

      const address = `127.0.0.1:${host.grpcPort}`;
      const health = createClient(Health, address, { maxAttempts: 1 });
      const client = createClient(EchoService, address);
      try {
        assert.equal((await health.check({ service: "" })).status, Status.SERVING);
        assert.equal((await health.check({ service: "nearhub.common.v1.EchoService" })).status, Status.SERVING);
        assert.equal((await client.echo({ text: "up" })).text, "up");
        assert.equal((await fetch(`http://127.0.0.1:${host.metricsPort}/healthz`)).status, 200);
        assert.match(
          await (await fetch(`http://127.0.0.1:${host.metricsPort}/metrics`)).text(),
          /^nearhub_service_ready\{service="test"\} 1$/m,
        );

        // Provisioning ran in the host's namespace.
        assert.equal(host.names.namespace, namespace);
        const stream = await host.bus.jsm.streams.info(host.names.stream("EVENTS"));
        assert.deepEqual(stream.config.subjects, [`nearhub_${namespace}.events.>`]);
        await (await host.bus.kv(host.names.bucket("state"))).put("k", "v");

        const bus = host.bus;
        const first = host.stop();
        const second = host.stop();
        assert.equal(first, second, "stop() is idempotent");
        await first;
        await host.stop();
        assert.deepEqual(stops, ["last registered", "first registered"], "callbacks run once, newest first");
        assert.equal(bus.nc.isClosed(), true, "NATS was drained");
        assert.equal(host.health.get(), Status.NOT_SERVING);
        await assert.rejects(health.check({ service: "" }), (error: unknown) => {
          assert.ok(error instanceof NearhubError);
          assert.equal(error.code, Code.Unavailable);
          return true;
        });
        await assert.rejects(fetch(`http://127.0.0.1:${host.metricsPort}/healthz`));
        assert.equal(await canBind(host.grpcPort), true, "the gRPC port is free again");
      } finally {
        health.$close();
        client.$close();
      }
    } finally {
      await host?.stop();
      await deleteNamespace(namespace);
    }
  });

  test("an unreachable NATS fails the start with UNAVAILABLE naming the URL, and frees the ports", async () => {
    const grpcPort = await freePort();
    const metricsPort = await freePort();
    let setupRan = false;
    await assert.rejects(
      ServiceHost.start(
        {
          name: "test",
          common: config(uniqueNamespace(), {
            NATS_URL: "nats://127.0.0.1:1",
            NEARHUB_NATS_CONNECT_TIMEOUT_MS: "300",
            NEARHUB_METRICS_PORT: String(metricsPort),
          }),
          grpcPort,
          logger: silentLogger,
        },
        async () => {
          setupRan = true;
        },
      ),
      (error: unknown) => {
        assert.ok(error instanceof NearhubError);
        assert.equal(error.code, Code.Unavailable);
        assert.match(error.message, /cannot reach NATS at nats:\/\/127\.0\.0\.1:1/);
        return true;
      },
    );
    assert.equal(setupRan, false);
    assert.equal(await canBind(grpcPort), true, "the gRPC port was released");
    assert.equal(await canBind(metricsPort), true, "the metrics port was released");
  });

  test("a failing setup fails the start with its error and stops what had started", async () => {
    const namespace = uniqueNamespace();
    const grpcPort = await freePort();
    const stops: string[] = [];
    try {
      await assert.rejects(
        ServiceHost.start(
          { name: "test", common: config(namespace), grpcPort, logger: silentLogger, opsServer: false },
          async (h) => {
            h.onStop(() => {
              stops.push("stopped");
            });
            assert.equal(h.metricsPort, -1, "no ops server when opsServer is false");
            throw new NearhubError(Code.FailedPrecondition, "the blob folder /nope is not writable");
          },
        ),
        /the blob folder \/nope is not writable/,
      );
      assert.deepEqual(stops, ["stopped"]);
      assert.equal(await canBind(grpcPort), true);
    } finally {
      await deleteNamespace(namespace);
    }
  });

  test("a gRPC port in use fails the start with a clear message", async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      await assert.rejects(
        ServiceHost.start(
          { name: "test", common: config(uniqueNamespace()), grpcPort: port, logger: silentLogger },
          async () => undefined,
        ),
        (error: unknown) => {
          assert.ok(error instanceof NearhubError);
          assert.equal(error.code, Code.Unavailable);
          assert.match(error.message, new RegExp(`cannot listen for gRPC on 127\\.0\\.0\\.1:${port}`));
          return true;
        },
      );
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });
});
