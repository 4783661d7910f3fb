import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Health, HealthCheckRequestSchema } from "@nearhub/proto/health";
import { Code, NearhubError } from "./errors.js";
import { HealthReporter, ServingStatus } from "./health.js";
import { silentLogger } from "./logger.js";
import { ServiceMetrics } from "./metrics.js";
import { createClient } from "./rpc-client.js";
import { RpcServer } from "./rpc-server.js";
import type { CallContext } from "./rpc-types.js";

describe("HealthReporter", () => {
  test("starts NOT_SERVING for the server and every named service", () => {
    const health = new HealthReporter(["nearhub.sync.v1.SyncService"]);
    assert.equal(health.get(), ServingStatus.NOT_SERVING);
    assert.equal(health.get(""), ServingStatus.NOT_SERVING);
    assert.equal(health.get("nearhub.sync.v1.SyncService"), ServingStatus.NOT_SERVING);
    assert.equal(health.get("nearhub.other.v1.Other"), undefined);
  });

  test("setAll changes the server and every known service", () => {
    const health = new HealthReporter(["a.A", "b.B"]);
    health.set("c.C", ServingStatus.NOT_SERVING);
    health.setAll(ServingStatus.SERVING);
    for (const name of ["", "a.A", "b.B", "c.C"]) assert.equal(health.get(name), ServingStatus.SERVING, name);
    health.set("b.B", ServingStatus.NOT_SERVING);
    assert.equal(health.get("b.B"), ServingStatus.NOT_SERVING);
    assert.equal(health.get("a.A"), ServingStatus.SERVING);
  });

  test("watch tells of a change made while the watcher was not reading", async () => {
    // The gRPC server pulls the next status only after the previous one is written, and a
    // slow client delays that: a change in between must not be lost.
    const health = new HealthReporter();
    const controller = new AbortController();
    const ctx = { signal: controller.signal } as CallContext;
    const stream = health.implementation().watch(create(HealthCheckRequestSchema, { service: "" }), ctx);
    const it = stream[Symbol.asyncIterator]();
    try {
      assert.equal((await it.next()).value?.status, ServingStatus.NOT_SERVING);
      health.set("", ServingStatus.SERVING);
      assert.equal((await it.next()).value?.status, ServingStatus.SERVING);
    } finally {
      controller.abort();
      await it.return?.();
    }
  });

  test("watch ends quietly when its signal aborts", async () => {
    const health = new HealthReporter();
    const controller = new AbortController();
    const stream = health.implementation().watch(create(HealthCheckRequestSchema, { service: "" }), {
      signal: controller.signal,
    } as CallContext);
    const it = stream[Symbol.asyncIterator]();
    assert.equal((await it.next()).done, false);
    const next = it.next();
    controller.abort();
    assert.equal((await next).done, true);
  });
});

describe("grpc.health.v1.Health over gRPC", () => {
  const health = new HealthReporter(["nearhub.common.v1.EchoService"]);
  let server: RpcServer;
  let client: ReturnType<typeof createClient<typeof Health>>;
  before(async () => {
    server = new RpcServer({ service: "test", logger: silentLogger, metrics: new ServiceMetrics("test") });
    server.addService(Health, health.implementation());
    const port = await server.listen("127.0.0.1", 0);
    client = createClient(Health, `127.0.0.1:${port}`);
  });
  after(async () => {
    client.$close();
    await server.shutdown(1000);
  });

  test('Check of the server ("") and of a known service', async () => {
    health.setAll(ServingStatus.NOT_SERVING);
    assert.equal((await client.check({ service: "" })).status, ServingStatus.NOT_SERVING);
    health.setAll(ServingStatus.SERVING);
    assert.equal((await client.check({ service: "" })).status, ServingStatus.SERVING);
    assert.equal((await client.check({ service: "nearhub.common.v1.EchoService" })).status, ServingStatus.SERVING);
  });

  test("Check of an unknown service is NOT_FOUND naming it", async () => {
    await assert.rejects(client.check({ service: "nearhub.nope.v1.Nope" }), (error: unknown) => {
      assert.ok(error instanceof NearhubError);
      assert.equal(error.code, Code.NotFound);
      assert.match(error.message, /unknown service "nearhub\.nope\.v1\.Nope"/);
      return true;
    });
  });

  test("Watch streams the current status, then each change", async () => {
    health.setAll(ServingStatus.NOT_SERVING);
    const seen: ServingStatus[] = [];
    for await (const response of client.watch({ service: "nearhub.common.v1.EchoService" })) {
      seen.push(response.status);
      if (seen.length === 1) health.set("nearhub.common.v1.EchoService", ServingStatus.SERVING);
      if (seen.length === 2) {
        // A change of another service is not this watcher's business; a repeat is no change.
        health.set("", ServingStatus.SERVING);
        health.set("nearhub.common.v1.EchoService", ServingStatus.SERVING);
        health.set("nearhub.common.v1.EchoService", ServingStatus.NOT_SERVING);
      }
      if (seen.length === 3) break;
    }
    assert.deepEqual(seen, [ServingStatus.NOT_SERVING, ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
  });

  test("Watch of an unknown service says SERVICE_UNKNOWN, then tells when it appears", async () => {
    const seen: ServingStatus[] = [];
    for await (const response of client.watch({ service: "nearhub.later.v1.Later" })) {
      seen.push(response.status);
      if (seen.length === 1) health.set("nearhub.later.v1.Later", ServingStatus.SERVING);
      if (seen.length === 2) break;
    }
    assert.deepEqual(seen, [ServingStatus.SERVICE_UNKNOWN, ServingStatus.SERVING]);
  });

  test("leaving a Watch removes its listener from the reporter", async () => {
    const emitter = (health as unknown as { changes: NodeJS.EventEmitter }).changes;
    const before = emitter.listenerCount("change");
    for await (const response of client.watch({ service: "" })) {
      assert.ok(response.status);
      break;
    }
    for (let i = 0; i < 100 && emitter.listenerCount("change") > before; i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.equal(emitter.listenerCount("change"), before);
  });
});
