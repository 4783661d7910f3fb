import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createClient, parseEnv, startTelemetry, type Client, type Telemetry } from "@nearhub/platform";
import { GRPCInferenceService } from "@nearhub/proto/inference";
import { adminAuth, deleteNamespace, nats, serviceEnv, tempDir, uniqueNamespace } from "@nearhub/testing";
import { inferenceEnv } from "./config.js";
import { mlpModel, seededFloats } from "./onnx-model-builder.js";
import { startInferenceGateway, type InferenceGateway } from "./service.js";

/** The parts of a finished SDK span this test reads. */
interface FinishedSpan {
  name: string;
  attributes: Record<string, unknown>;
  spanContext(): { traceId: string; spanId: string };
  parentSpanContext?: { spanId: string };
}

// One SDK per process (it registers global providers), as a service's main does.
const finished: FinishedSpan[] = [];
const collector = {
  onStart: () => undefined,
  onEnd: (span: FinishedSpan) => void finished.push(span),
  forceFlush: () => Promise.resolve(),
  shutdown: () => Promise.resolve(),
};

describe("inference gateway traces", () => {
  let telemetry: Telemetry;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let gateway: InferenceGateway;
  let client: Client<typeof GRPCInferenceService>;
  let natsUrl: string;
  const ns = uniqueNamespace("inftrace");

  before(async () => {
    telemetry = startTelemetry({ serviceName: "inference-trace-test", spanProcessors: [collector] });
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const models = join(dir.path, "models");
    await mkdir(join(models, "mlp", "1"), { recursive: true });
    await writeFile(join(models, "mlp", "1", "model.onnx"), mlpModel(64, 256, 10));
    await writeFile(
      join(models, "mlp", "1", "nearhub-model.json"),
      JSON.stringify({ max_batch_size: 8, dynamic_batching: { max_queue_delay_microseconds: 500 } }),
    );
    gateway = await startInferenceGateway(
      parseEnv("inference-gateway", inferenceEnv, serviceEnv(natsUrl, ns, dir.path, { NEARHUB_MODEL_DIR: models })),
    );
    client = createClient(GRPCInferenceService, `127.0.0.1:${gateway.grpcPort}`, {
      timeoutMs: 30_000,
      metadata: adminAuth(ns),
    });
  });

  after(async () => {
    client?.$close();
    await gateway?.stop();
    await deleteNamespace(natsUrl, ns).catch(() => undefined);
    await dir?.cleanup();
    await telemetry?.shutdown();
  });

  test("a traced ModelInfer has an infer span under the RPC span, with queue, compute and batch attributes", async () => {
    const input = seededFloats(64, 5);
    await client.modelInfer({
      modelName: "mlp",
      inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }],
      rawInputContents: [new Uint8Array(input.buffer)],
    });
    const rpc = finished.find((s) => s.name === "inference.GRPCInferenceService/ModelInfer");
    const infer = finished.find((s) => s.name === "infer mlp");
    assert.ok(rpc, `no server span among ${finished.map((s) => s.name).join(", ")}`);
    assert.ok(infer, `no infer span among ${finished.map((s) => s.name).join(", ")}`);
    assert.equal(infer.spanContext().traceId, rpc.spanContext().traceId);
    assert.equal(infer.parentSpanContext?.spanId, rpc.spanContext().spanId);
    assert.equal(infer.attributes["inference.model"], "mlp");
    assert.equal(infer.attributes["inference.version"], "1");
    assert.equal(infer.attributes["inference.batch_rows"], 1);
    assert.equal(infer.attributes["inference.executed_batch_size"], 1);
    assert.equal(typeof infer.attributes["inference.queue_us"], "number");
    assert.equal(typeof infer.attributes["inference.compute_us"], "number");
    assert.equal(rpc.attributes["rpc.method"], "ModelInfer");
  });
});
