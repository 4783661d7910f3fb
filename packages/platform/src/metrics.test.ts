import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ServiceMetrics } from "./metrics.js";

/** The value of the one series `name{labels…}` in Prometheus text, whatever the label order. */
function valueOf(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split("\n")) {
    const m = /^([a-z_:]+)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)) got[l[1] ?? ""] = l[2] ?? "";
    const keys = Object.keys(got);
    if (keys.length === Object.keys(labels).length && keys.every((k) => got[k] === labels[k])) return Number(m[3]);
  }
  return undefined;
}

describe("ServiceMetrics", () => {
  test("registers the RED histograms, bus counters, readiness gauge and process metrics", async () => {
    const metrics = new ServiceMetrics("sync");
    const names = (await metrics.registry.getMetricsAsJSON()).map((m) => m.name);
    for (const name of [
      "nearhub_rpc_server_duration_seconds",
      "nearhub_rpc_client_duration_seconds",
      "nearhub_http_server_duration_seconds",
      "nearhub_bus_published_total",
      "nearhub_bus_consumed_total",
      "nearhub_service_ready",
      "process_cpu_user_seconds_total",
      "nodejs_eventloop_lag_seconds",
    ]) {
      assert.ok(names.includes(name), `${name} is registered`);
    }
  });

  test("every series carries the service label", async () => {
    const metrics = new ServiceMetrics("storage");
    metrics.ready.set(1);
    metrics.published.inc({ type: "nearhub.storage.blob.stored", result: "ok" });
    metrics.consumed.inc({ consumer: "indexer", outcome: "ack" });
    metrics.httpDuration.observe({ method: "GET", route: "/metrics", status: "200" }, 0.002);
    const text = await metrics.registry.metrics();
    assert.equal(valueOf(text, "nearhub_service_ready", { service: "storage" }), 1);
    assert.equal(
      valueOf(text, "nearhub_bus_published_total", {
        type: "nearhub.storage.blob.stored",
        result: "ok",
        service: "storage",
      }),
      1,
    );
    assert.equal(
      valueOf(text, "nearhub_bus_consumed_total", { consumer: "indexer", outcome: "ack", service: "storage" }),
      1,
    );
    assert.equal(
      valueOf(text, "nearhub_http_server_duration_seconds_count", {
        method: "GET",
        route: "/metrics",
        status: "200",
        service: "storage",
      }),
      1,
    );
    assert.equal(valueOf(text, "process_cpu_user_seconds_total", { service: "storage" }) !== undefined, true);
  });

  test("the latency histogram has buckets from half a millisecond to 30 s", async () => {
    const metrics = new ServiceMetrics("edge");
    metrics.rpcServerDuration.observe(
      { rpc_service: "nearhub.sync.v1.SyncService", method: "AddMirror", code: "ok" },
      0.003,
    );
    const text = await metrics.registry.metrics();
    // The gRPC service is `rpc_service`; `service` stays the nearhub service that served it.
    const labels = { service: "edge", rpc_service: "nearhub.sync.v1.SyncService", method: "AddMirror", code: "ok" };
    assert.equal(valueOf(text, "nearhub_rpc_server_duration_seconds_bucket", { ...labels, le: "0.0005" }), 0);
    assert.equal(valueOf(text, "nearhub_rpc_server_duration_seconds_bucket", { ...labels, le: "0.0025" }), 0);
    assert.equal(valueOf(text, "nearhub_rpc_server_duration_seconds_bucket", { ...labels, le: "0.005" }), 1);
    assert.equal(valueOf(text, "nearhub_rpc_server_duration_seconds_bucket", { ...labels, le: "30" }), 1);
    assert.equal(valueOf(text, "nearhub_rpc_server_duration_seconds_bucket", { ...labels, le: "+Inf" }), 1);
  });

  test("two services in one process keep separate registries", async () => {
    const a = new ServiceMetrics("a");
    const b = new ServiceMetrics("b");
    a.ready.set(1);
    b.ready.set(0);
    assert.equal(valueOf(await a.registry.metrics(), "nearhub_service_ready", { service: "a" }), 1);
    assert.equal(valueOf(await b.registry.metrics(), "nearhub_service_ready", { service: "b" }), 0);
    assert.doesNotMatch(await a.registry.metrics(), /service="b"/);
  });
});
