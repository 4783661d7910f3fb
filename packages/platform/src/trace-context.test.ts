import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http";
import * as grpc from "@grpc/grpc-js";
import { headers } from "@nats-io/nats-core";
import { ROOT_CONTEXT, TraceFlags, context, trace, type SpanContext } from "@opentelemetry/api";
import { TraceState } from "@opentelemetry/core";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { startTelemetry, type Telemetry } from "./telemetry.js";
import { extractFromHeaders, extractFromMetadata, injectIntoHeaders, injectIntoMetadata } from "./trace-context.js";

const remote: SpanContext = {
  traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
  spanId: "00f067aa0ba902b7",
  traceFlags: TraceFlags.SAMPLED,
};
const withSpan = trace.setSpanContext(ROOT_CONTEXT, remote);

// The propagator and the context manager are what startTelemetry registers, as in a service.
let telemetry: Telemetry;
before(() => {
  telemetry = startTelemetry({
    serviceName: "trace-context-test",
    spanProcessors: [new SimpleSpanProcessor(new InMemorySpanExporter())],
  });
});
after(async () => {
  await telemetry.shutdown();
});

describe("NATS headers", () => {
  test("inject writes traceparent and extract reads it back as a remote parent", () => {
    const h = headers();
    injectIntoHeaders(h, withSpan);
    assert.equal(h.get("traceparent"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    const extracted = trace.getSpanContext(extractFromHeaders(h));
    assert.deepEqual(extracted, { ...remote, isRemote: true });
  });

  test("tracestate travels too", () => {
    const h = headers();
    injectIntoHeaders(h, trace.setSpanContext(ROOT_CONTEXT, { ...remote, traceState: new TraceState("vendor=v1") }));
    assert.equal(h.get("tracestate"), "vendor=v1");
    assert.equal(trace.getSpanContext(extractFromHeaders(h))?.traceState?.serialize(), "vendor=v1");
  });

  test("headers survive encoding, as they do on the wire", () => {
    const h = headers();
    injectIntoHeaders(h, withSpan);
    h.set("ce-id", "abc");
    // MsgHdrsImpl's wire form, as nats.js writes and reads it.
    const wire = (h as unknown as { encode(): Uint8Array }).encode();
    const decoded = (h.constructor as unknown as { decode(a: Uint8Array): typeof h }).decode(wire);
    assert.equal(trace.getSpanContext(extractFromHeaders(decoded))?.spanId, remote.spanId);
  });

  test("no headers, or headers without trace context, give no parent", () => {
    assert.equal(trace.getSpanContext(extractFromHeaders(undefined)), undefined);
    const h = headers();
    h.set("ce-id", "1");
    assert.equal(trace.getSpanContext(extractFromHeaders(h)), undefined);
  });

  test("a malformed traceparent is ignored", () => {
    const h = headers();
    h.set("traceparent", "00-not-a-trace-01");
    assert.equal(trace.getSpanContext(extractFromHeaders(h)), undefined);
  });

  test("inject without an active span writes nothing", () => {
    const h = headers();
    injectIntoHeaders(h, ROOT_CONTEXT);
    assert.equal(h.has("traceparent"), false);
  });

  test("inject uses the active span by default, and extract continues from the current context", () => {
    const tracer = trace.getTracer("trace-context-test");
    const h = headers();
    const sent = tracer.startActiveSpan("publish", (span) => {
      injectIntoHeaders(h);
      span.end();
      return span.spanContext();
    });
    assert.equal(h.get("traceparent"), `00-${sent.traceId}-${sent.spanId}-01`);
    const received = tracer.startSpan("process", {}, extractFromHeaders(h));
    received.end();
    assert.equal(received.spanContext().traceId, sent.traceId);
    assert.equal((received as unknown as { parentSpanContext?: SpanContext }).parentSpanContext?.spanId, sent.spanId);
    assert.equal(context.active(), ROOT_CONTEXT);
  });
});

describe("gRPC metadata", () => {
  test("inject writes traceparent and extract reads it back as a remote parent", () => {
    const md = new grpc.Metadata();
    injectIntoMetadata(md, withSpan);
    assert.deepEqual(md.get("traceparent"), ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]);
    assert.deepEqual(trace.getSpanContext(extractFromMetadata(md)), { ...remote, isRemote: true });
  });

  test("metadata without trace context gives no parent", () => {
    const md = new grpc.Metadata();
    md.set("authorization", "Bearer x");
    assert.equal(trace.getSpanContext(extractFromMetadata(md)), undefined);
  });

  test("inject uses the active span by default", () => {
    const md = new grpc.Metadata();
    const sent = trace.getTracer("trace-context-test").startActiveSpan("call", (span) => {
      injectIntoMetadata(md);
      span.end();
      return span.spanContext();
    });
    assert.equal(trace.getSpanContext(extractFromMetadata(md))?.spanId, sent.spanId);
  });

  test("trace context survives the HTTP/2 header round trip", () => {
    const md = new grpc.Metadata();
    injectIntoMetadata(md, withSpan);
    const back = grpc.Metadata.fromHttp2Headers(md.toHttp2Headers() as IncomingHttpHeaders);
    assert.equal(trace.getSpanContext(extractFromMetadata(back))?.traceId, remote.traceId);
  });
});
