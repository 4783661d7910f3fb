// scratch: gateway in this process, load in a child; PROFILE spec via env
import { fork } from "node:child_process";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Session } from "node:inspector/promises";
import { writeFileSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import { ModelInferRequestSchema } from "@nearhub/proto/inference";
import { parseEnv, silentLogger } from "@nearhub/platform";
import { inferenceEnv, mlpModel, seededFloats, startInferenceGateway } from "@nearhub/inference-gateway";
import { adminAuth, nats, serviceEnv, uniqueNamespace } from "@nearhub/testing";

const handle = await nats();
const NS = uniqueNamespace("prof");
const dir = await mkdtemp(join(tmpdir(), "gwprof-"));
const model = mlpModel(64, 256, 10);
for (const [name, config] of [["mlp", { max_batch_size: 256, instances: Number(process.env.INST ?? 1) }], ["mlp_batched", { max_batch_size: 256, instances: 1, dynamic_batching: { max_queue_delay_microseconds: 0 }, max_queue_size: 4096 }]] as const) {
  await mkdir(join(dir, "models", name, "1"), { recursive: true });
  await writeFile(join(dir, "models", name, "1", "model.onnx"), model);
  await writeFile(join(dir, "models", name, "1", "nearhub-model.json"), JSON.stringify(config));
}
const gateway = await startInferenceGateway(parseEnv("inference-gateway", inferenceEnv, serviceEnv(handle.url, NS, dir, { NEARHUB_MODEL_DIR: join(dir, "models") })), { logger: silentLogger });
const child = fork(fileURLToPath(new URL("./grpc-load.ts", import.meta.url)), [], { execArgv: ["--conditions=development", "--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
await new Promise((r) => child.once("message", r));
const input = seededFloats(64, 11);
const req = (modelName: string) => toBinary(ModelInferRequestSchema, create(ModelInferRequestSchema, { modelName, inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }], rawInputContents: [new Uint8Array(input.buffer)] }));
import { echoServer } from "./inference.js";
import { createClient } from "@nearhub/platform";
import { GRPCInferenceService, ModelInferResponseSchema, ModelStreamInferResponseSchema } from "@nearhub/proto/inference";
import { fromBinary } from "@bufbuild/protobuf";
const cl = createClient(GRPCInferenceService, `127.0.0.1:${gateway.grpcPort}`, { timeoutMs: 30000, metadata: adminAuth(NS) });
const first = await cl.modelInfer(fromBinary(ModelInferRequestSchema, req("mlp")));
await cl.modelInfer(fromBinary(ModelInferRequestSchema, req("mlp_batched")));
const echo = await echoServer(toBinary(ModelInferResponseSchema, first), toBinary(ModelStreamInferResponseSchema, create(ModelStreamInferResponseSchema, { inferResponse: first })));
const specs = JSON.parse(process.env.SPECS ?? '[{"model":"mlp_batched","concurrency":64}]');
const session = new Session(); session.connect(); await session.post("Profiler.enable");
for (const s of specs) {
  if (process.env.PROF) setTimeout(() => void session.post("Profiler.start"), 700);
  let cpu0 = process.cpuUsage(); let cpu1 = cpu0;
  setTimeout(() => (cpu0 = process.cpuUsage()), 500); setTimeout(() => (cpu1 = process.cpuUsage(cpu0)), 500 + (s.durationMs ?? 3000));
  const r: any = await new Promise((resolve) => { child.once("message", resolve); child.send({ target: s.model === "echo" ? `127.0.0.1:${echo.port}` : `127.0.0.1:${gateway.grpcPort}`, path: "/inference.GRPCInferenceService/ModelInfer", kind: s.kind ?? "unary", request: Array.from(req(s.model)), concurrency: s.concurrency ?? 0, metadata: adminAuth(NS), rate: s.rate, durationMs: s.durationMs ?? 3000, warmupMs: 500 }); });
  if (process.env.PROF) { const { profile } = await session.post("Profiler.stop"); writeFileSync(`/tmp/gwprof/${process.env.PROF}-${s.model}-${s.concurrency}.cpuprofile`, JSON.stringify(profile)); }
  console.log(JSON.stringify(s), `${r.throughput.toFixed(0)} req/s p50 ${r.p50.toFixed(2)} p99 ${r.p99.toFixed(2)} errors ${r.errors} cpu/req ${((cpu1.user + cpu1.system) / r.completed).toFixed(0)} us`, r.firstError ?? "");
}
child.kill();
await gateway.stop();
process.exit(0);
