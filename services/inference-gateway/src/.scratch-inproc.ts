// scratch: gateway-specific cost without gRPC: inferenceApi.modelInfer in a closed loop
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Registry } from "prom-client";
import { HealthReporter, silentLogger } from "@nearhub/platform";
import { ModelInferRequestSchema } from "@nearhub/proto/inference";
import { ModelManager, LocalFolderSource, InferenceMetrics, OnnxBackend, mlpModel, seededFloats } from "./index.js";
const runMany = OnnxBackend.prototype.runMany;
import { inferenceApi } from "./inference-api.js";

const dir = await mkdtemp(join(tmpdir(), "inproc-"));
for (const [name, config] of [["mlp", { max_batch_size: 256, instances: 1 }], ["mlp_batched", { max_batch_size: 256, instances: 1, dynamic_batching: { max_queue_delay_microseconds: 0 }, max_queue_size: 4096 }]] as const) {
  await mkdir(join(dir, name, "1"), { recursive: true });
  await writeFile(join(dir, name, "1", "model.onnx"), mlpModel(64, 256, 10));
  await writeFile(join(dir, name, "1", "nearhub-model.json"), JSON.stringify(config));
}
const metrics = new InferenceMetrics(new Registry());
const models = new ModelManager({ source: new LocalFolderSource(dir), memoryBudgetBytes: 1 << 30, metrics, logger: silentLogger });
const api = inferenceApi(models, new HealthReporter() as never, metrics);
const input = seededFloats(64, 11);
const ctx = { deadline: undefined, signal: new AbortController().signal, authorize: () => Promise.resolve(), can: () => true } as never;
for (const spec of (process.env.MODELS ?? "mlp,mlp_batched").split(",")) {
  const [name, grouping] = spec.split(":") as [string, string | undefined];
  (OnnxBackend.prototype as { runMany?: unknown }).runMany = grouping === "off" ? undefined : runMany;
  const c = Number(process.env.C ?? 64);
  const mk = () => create(ModelInferRequestSchema, { modelName: name, inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }], rawInputContents: [new Uint8Array(input.buffer.slice(0))] });
  await api.modelInfer(mk(), ctx);
  for (const round of [0, 1]) {
    const end = performance.now() + 2000;
    let n = 0;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(Array.from({ length: c }, async () => { while (performance.now() < end) { await api.modelInfer(mk(), ctx); n++; } }));
    const cpu = process.cpuUsage(cpu0);
    const wall = performance.now() - t0;
    if (round) console.log(`${spec} c=${c}: ${(n / wall * 1000).toFixed(0)} inf/s, cpu/req ${((cpu.user + cpu.system) / n).toFixed(1)} us, executions ${(await models.load(name, "1")).scheduler.executions}`);
  }
}
await models.close();
process.exit(0);
