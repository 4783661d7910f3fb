import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { context, propagation, trace } from "@opentelemetry/api";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { EchoRequestSchema, EchoResponseSchema, EchoService } from "@nearhub/proto/echo";
import { silentLogger } from "./logger.js";
import { ServiceMetrics } from "./metrics.js";
import { RpcServer } from "./rpc-server.js";
import type { ServiceImpl } from "./rpc-types.js";
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

describe("RpcServer without an exporter", () => {
  const seen: Array<{ traceId: string | undefined }> = [];
  const echo: ServiceImpl<typeof EchoService> = {
    echo: async (request) => {
      seen.push({ traceId: trace.getActiveSpan()?.spanContext().traceId });
      return { text: request.text };
    },
    echoServerStream: async function* () {},
    echoClientStream: async () => ({ texts: [] }),
    echoBidiStream: async function* () {},
  };
  let server: RpcServer;
  let address = "";
  before(async () => {
    server = new RpcServer({ service: "test", logger: silentLogger, metrics: new ServiceMetrics("test") });
    server.addService(EchoService, echo);
    address = `127.0.0.1:${await server.listen("127.0.0.1", 0)}`;
  });
  after(() => server.shutdown(1000));

  test("a call that continues no trace runs without a span; one that does keeps the caller's trace id", async () => {
    // A plain grpc-js client, as an outside caller (a Triton client) is: a nearhub client always
    // sends a traceparent of its own.
    const call = async (headers: Record<string, string>) => {
      const client = new grpc.Client(address, grpc.credentials.createInsecure());
      const metadata = new grpc.Metadata();
      for (const [k, v] of Object.entries(headers)) metadata.set(k, v);
      try {
        const answer = await new Promise<Buffer>((resolve, reject) =>
          client.makeUnaryRequest(
            `/${EchoService.typeName}/Echo`,
            (m: Uint8Array) => Buffer.from(m),
            (b: Buffer) => b,
            toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "x" })),
            metadata,
            (error, value) => (error || !value ? reject(error ?? new Error("no answer")) : resolve(value)),
          ),
        );
        assert.equal(fromBinary(EchoResponseSchema, answer).text, "x");
      } finally {
        client.close();
      }
      return seen.at(-1);
    };
    const untraced = await call({});
    assert.equal(untraced?.traceId, undefined);
    const traced = await call({ traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" });
    assert.equal(traced?.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    // A malformed traceparent is no trace to continue: the call runs as an untraced one.
    const malformed = await call({ traceparent: "00-not-a-trace-01" });
    assert.equal(malformed?.traceId, undefined);
  });
});
