import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { context, propagation, trace } from "@opentelemetry/api";
import { startTelemetry, type Telemetry } from "./telemetry.js";

// A service with no OTLP endpoint: its own process, as startTelemetry registers global providers.
let telemetry: Telemetry;
before(() => {
  telemetry = startTelemetry({ serviceName: "nearhub-telemetry-off-test" });
});
after(async () => {
  await telemetry.shutdown();
});

describe("startTelemetry without an exporter", () => {
  test("spans are not recorded but carry ids that logs and propagation use", () => {
    const span = trace.getTracer("t").startSpan("unexported");
    assert.equal(span.isRecording(), false);
    const ids = span.spanContext();
    assert.match(ids.traceId, /^[0-9a-f]{32}$/);
    assert.notEqual(ids.traceId, "0".repeat(32));
    const carrier: Record<string, string> = {};
    propagation.inject(trace.setSpan(context.active(), span), carrier);
    assert.match(carrier["traceparent"] ?? "", new RegExp(`^00-${ids.traceId}-${ids.spanId}-00$`));
    span.end();
  });

  test("a child keeps the incoming trace id", () => {
    const incoming = propagation.extract(context.active(), {
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    });
    const child = trace.getTracer("t").startSpan("child", {}, incoming);
    assert.equal(child.spanContext().traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    child.end();
  });
});
