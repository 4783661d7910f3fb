import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { context, propagation, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { startTelemetry, type Telemetry } from "./telemetry.js";

// One SDK per process: the SDK registers global providers, as a service does once in main.
const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;
before(() => {
  telemetry = startTelemetry({
    serviceName: "nearhub-telemetry-test",
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
});
after(async () => {
  await telemetry.shutdown();
});

describe("startTelemetry", () => {
  test("spans reach the given processors with the service name as resource", () => {
    trace.getTracer("t").startSpan("one").end();
    const span = exporter.getFinishedSpans().find((s) => s.name === "one");
    assert.ok(span);
    assert.equal(span.resource.attributes["service.name"], "nearhub-telemetry-test");
    assert.equal(span.resource.attributes["service.version"], "0.1.0");
  });

  test("the active span follows async work (AsyncLocalStorage context manager)", async () => {
    const tracer = trace.getTracer("t");
    await tracer.startActiveSpan("parent", async (parent) => {
      await sleep(1);
      await Promise.all(
        [1, 2].map(async (i) => {
          await sleep(i);
          tracer.startSpan(`child ${i}`).end();
        }),
      );
      parent.end();
    });
    const spans = exporter.getFinishedSpans();
    const parent = spans.find((s) => s.name === "parent");
    assert.ok(parent);
    for (const name of ["child 1", "child 2"]) {
      const child = spans.find((s) => s.name === name);
      assert.equal(child?.parentSpanContext?.spanId, parent.spanContext().spanId, name);
    }
  });

  test("the W3C trace context propagator is registered", () => {
    const carrier: Record<string, string> = {};
    trace.getTracer("t").startActiveSpan("propagated", (span) => {
      propagation.inject(context.active(), carrier);
      span.end();
    });
    assert.match(carrier["traceparent"] ?? "", /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });

  test("no auto-instrumentation: a plain fetch or http call makes no span", async () => {
    exporter.reset();
    await fetch("http://127.0.0.1:1/").catch(() => undefined);
    assert.deepEqual(exporter.getFinishedSpans(), []);
  });
});
