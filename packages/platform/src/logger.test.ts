import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { Code, NearhubError } from "./errors.js";
import { createLogger, silentLogger, type Logger } from "./logger.js";
import { startTelemetry, type Telemetry } from "./telemetry.js";

let telemetry: Telemetry;
before(() => {
  telemetry = startTelemetry({
    serviceName: "logger-test",
    spanProcessors: [new SimpleSpanProcessor(new InMemorySpanExporter())],
  });
});
after(async () => {
  await telemetry.shutdown();
});

/** A logger whose JSON lines land in `lines`, parsed. */
function collecting(level?: "debug" | "info" | "warn" | "error" | "silent"): {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
} {
  const lines: Array<Record<string, unknown>> = [];
  const destination = {
    write(chunk: string) {
      for (const line of chunk.split("\n")) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  };
  return { logger: createLogger({ service: "sync", destination, ...(level ? { level } : {}) }), lines };
}

describe("createLogger", () => {
  test("writes one JSON line per call with service, level name, time and message", () => {
    const { logger, lines } = collecting();
    logger.info("mirror added", { mirror: "acme/x" });
    assert.equal(lines.length, 1);
    const line = lines[0]!;
    assert.equal(line["service"], "sync");
    assert.equal(line["level"], "info");
    assert.equal(line["msg"], "mirror added");
    assert.equal(line["mirror"], "acme/x");
    assert.ok(!Number.isNaN(Date.parse(String(line["time"]))), "time is an ISO date");
    assert.match(String(line["time"]), /^\d{4}-\d\d-\d\dT/);
    assert.equal("pid" in line, false, "base replaces pino's pid and hostname");
    assert.equal("trace_id" in line, false, "no trace id outside a span");
  });

  test("a child adds its fields, e.g. component, to every line", () => {
    const { logger, lines } = collecting();
    const rpc = logger.child({ component: "rpc" });
    rpc.warn("slow call", { method: "Echo" });
    rpc.child({ method: "Echo" }).error("failed");
    logger.info("parent line");
    assert.equal(lines[0]?.["component"], "rpc");
    assert.equal(lines[0]?.["level"], "warn");
    assert.equal(lines[1]?.["component"], "rpc");
    assert.equal(lines[1]?.["method"], "Echo");
    assert.equal(lines[1]?.["service"], "sync");
    assert.equal("component" in (lines[2] ?? {}), false, "the parent is unchanged");
  });

  test("inside an active span every line carries trace_id and span_id", () => {
    const { logger, lines } = collecting();
    const child = logger.child({ component: "consumer" });
    const ids = trace.getTracer("logger-test").startActiveSpan("work", (span) => {
      logger.info("in span");
      child.info("child in span");
      span.end();
      return span.spanContext();
    });
    logger.info("after span");
    for (const line of lines.slice(0, 2)) {
      assert.equal(line["trace_id"], ids.traceId);
      assert.equal(line["span_id"], ids.spanId);
    }
    assert.equal("trace_id" in (lines[2] ?? {}), false);
  });

  test("the trace id follows the active span across await", async () => {
    const { logger, lines } = collecting();
    const traceId = await trace.getTracer("logger-test").startActiveSpan("async work", async (span) => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      logger.info("after await");
      span.end();
      return span.spanContext().traceId;
    });
    assert.equal(lines[0]?.["trace_id"], traceId);
  });

  test("errors in fields are serialized with type, message and stack", () => {
    const { logger, lines } = collecting();
    logger.error("call failed", { error: new NearhubError(Code.Unavailable, "NATS is down"), attempt: 2 });
    const error = lines[0]?.["error"] as Record<string, unknown>;
    assert.equal(error["type"], "NearhubError");
    assert.equal(error["message"], "NATS is down");
    assert.match(String(error["stack"]), /NATS is down/);
    assert.equal(error["code"], Code.Unavailable);
    assert.equal(lines[0]?.["attempt"], 2);
  });

  test("the level filters lines", () => {
    const info = collecting();
    info.logger.debug("hidden");
    info.logger.info("shown");
    assert.deepEqual(
      info.lines.map((l) => l["msg"]),
      ["shown"],
    );
    const debug = collecting("debug");
    debug.logger.debug("now shown");
    assert.equal(debug.lines[0]?.["level"], "debug");
    const warn = collecting("warn");
    warn.logger.info("hidden");
    warn.logger.warn("shown");
    warn.logger.error("shown too");
    assert.equal(warn.lines.length, 2);
    const silent = collecting("silent");
    silent.logger.error("nothing");
    assert.equal(silent.lines.length, 0);
  });
});

describe("silentLogger", () => {
  test("accepts every call and its children are silent too", () => {
    assert.equal(silentLogger.child({ component: "x" }), silentLogger);
    assert.equal(silentLogger.info("x", { a: 1 }), undefined);
    assert.equal(silentLogger.error("x"), undefined);
  });
});
