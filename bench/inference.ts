/**
 * The inference gateway on a tiny MLP (64 → 256 → 10, FP32) over loopback, beside two
 * baselines measured in the same script: the model run in-process with onnxruntime-node (the
 * compute floor) and a bare grpc-js server that decodes the same ModelInferRequest and answers
 * a response of the same size (the floor gRPC itself sets on this machine). Prints throughput
 * and p50/p99 at concurrency 1, 8, 64 and 256, unary and streaming, with and without dynamic
 * batching; the p99 at 1,000 requests/s offered open-loop; the first-load time; and the
 * ratios against the targets. Load comes from bench/grpc-load.ts in a child process.
 */
import { fork, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  GRPCInferenceService,
  ModelInferRequestSchema,
  ModelInferResponseSchema,
  ModelStreamInferResponseSchema,
} from "@nearhub/proto/inference";
import { createClient, parseEnv, silentLogger } from "@nearhub/platform";
import { inferenceEnv, mlpModel, seededFloats, startInferenceGateway } from "@nearhub/inference-gateway";
import { adminAuth, nats, deleteNamespace, serviceEnv, uniqueNamespace } from "@nearhub/testing";
import * as ort from "onnxruntime-node";
import type { LoadResult, LoadSpec } from "./grpc-load.js";

const DURATION_MS = Number(process.env["BENCH_DURATION_MS"] ?? 1500);
const WARMUP_MS = 300;
const CONCURRENCY = [1, 8, 64, 256];

function fmt(n: number, digits = 0): string {
  return Number.isFinite(n) ? n.toFixed(digits) : "-";
}

class LoadGenerator {
  private constructor(
    private readonly child: ChildProcess,
    /** Sent with every call (the gateway's and the echo's alike, so the bytes match). */
    private readonly metadata: Record<string, string>,
  ) {}

  static async start(metadata: Record<string, string>): Promise<LoadGenerator> {
    const child = fork(fileURLToPath(new URL("./grpc-load.ts", import.meta.url)), [], {
      execArgv: ["--conditions=development", "--import", "tsx"],
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    await new Promise<void>((resolve, reject) => {
      child.once("message", () => resolve());
      child.once("exit", (code) => reject(new Error(`load generator exited with ${String(code)}`)));
    });
    return new LoadGenerator(child, metadata);
  }

  run(
    spec: Omit<LoadSpec, "durationMs" | "warmupMs"> & { durationMs?: number; warmupMs?: number },
  ): Promise<LoadResult> {
    return new Promise((resolve, reject) => {
      this.child.once("message", (m: LoadResult | { error: string }) =>
        "error" in m ? reject(new Error(m.error)) : resolve(m),
      );
      this.child.send({
        durationMs: DURATION_MS,
        warmupMs: WARMUP_MS,
        metadata: this.metadata,
        ...spec,
        request: Array.from(spec.request),
      });
    });
  }

  stop(): void {
    this.child.kill();
  }
}

function row(label: string, r: LoadResult, unit = "req/s", itemsPerRequest = 1): string {
  const items = itemsPerRequest > 1 ? `  (${fmt(r.throughput * itemsPerRequest)} inferences/s)` : "";
  const errors = r.errors > 0 ? `  errors ${r.errors}: ${r.firstError ?? ""}` : "";
  return `  ${label.padEnd(34)} ${fmt(r.throughput).padStart(7)} ${unit}  p50 ${fmt(r.p50, 2).padStart(6)} ms  p99 ${fmt(r.p99, 2).padStart(7)} ms${items}${errors}`;
}

/** A bare grpc-js server with the same serialization work: decode the request, encode a same-size response. */
export async function echoServer(
  response: Uint8Array,
  streamResponse: Uint8Array,
): Promise<{ port: number; stop: () => void }> {
  // The transport options nearhub's RpcServer uses, so the gap is nearhub's own work.
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.enable_channelz": 0,
  });
  const responseMessage = fromBinary(ModelInferResponseSchema, response);
  const streamMessage = fromBinary(ModelStreamInferResponseSchema, streamResponse);
  const decode = (b: Buffer) => fromBinary(ModelInferRequestSchema, b);
  server.addService(
    {
      ModelInfer: {
        path: "/inference.GRPCInferenceService/ModelInfer",
        requestStream: false,
        responseStream: false,
        requestDeserialize: decode,
        requestSerialize: (m: unknown) => Buffer.from(toBinary(ModelInferRequestSchema, m as never)),
        responseSerialize: (m: unknown) => Buffer.from(toBinary(ModelInferResponseSchema, m as never)),
        responseDeserialize: (b: Buffer) => fromBinary(ModelInferResponseSchema, b),
      },
      ModelStreamInfer: {
        path: "/inference.GRPCInferenceService/ModelStreamInfer",
        requestStream: true,
        responseStream: true,
        requestDeserialize: decode,
        requestSerialize: (m: unknown) => Buffer.from(toBinary(ModelInferRequestSchema, m as never)),
        responseSerialize: (m: unknown) => Buffer.from(toBinary(ModelStreamInferResponseSchema, m as never)),
        responseDeserialize: (b: Buffer) => fromBinary(ModelStreamInferResponseSchema, b),
      },
    },
    {
      ModelInfer: (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        cb(null, responseMessage),
      ModelStreamInfer: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        call.on("data", () => call.write(streamMessage));
        call.on("end", () => call.end());
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return { port, stop: () => server.forceShutdown() };
}

/** The model in-process: sequential batch-1 runs and batch-64 runs. */
async function inProcess(model: Uint8Array): Promise<{ single: LoadResult; batched: LoadResult }> {
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const measure = async (rows: number): Promise<LoadResult> => {
    const feed = { input: new ort.Tensor("float32", seededFloats(rows * 64, 3), [rows, 64]) };
    const warmEnd = performance.now() + WARMUP_MS;
    while (performance.now() < warmEnd) await session.run(feed);
    const samples: number[] = [];
    const end = performance.now() + DURATION_MS;
    while (performance.now() < end) {
      const t = performance.now();
      await session.run(feed);
      samples.push(performance.now() - t);
    }
    samples.sort((a, b) => a - b);
    return {
      completed: samples.length,
      errors: 0,
      seconds: DURATION_MS / 1000,
      throughput: samples.length / (DURATION_MS / 1000),
      p50: samples[Math.floor(samples.length / 2)] ?? NaN,
      p99: samples[Math.floor(samples.length * 0.99)] ?? NaN,
    };
  };
  const single = await measure(1);
  const batched = await measure(64);
  await session.release();
  return { single, batched };
}

export async function main(): Promise<void> {
  const handle = await nats().catch(() => undefined);
  if (!handle) {
    console.log("inference: skipped (no NATS server: set NATS_URL or install nats-server)");
    return;
  }
  const ns = uniqueNamespace("bench");
  const dir = await mkdtemp(join(tmpdir(), "nearhub-bench-inference-"));
  const model = mlpModel(64, 256, 10);
  const write = async (name: string, config: object) => {
    await mkdir(join(dir, "models", name, "1"), { recursive: true });
    await writeFile(join(dir, "models", name, "1", "model.onnx"), model);
    await writeFile(join(dir, "models", name, "1", "nearhub-model.json"), JSON.stringify(config));
  };
  await write("mlp", { max_batch_size: 256, instances: 1 });
  await write("mlp_batched", {
    max_batch_size: 256,
    instances: 1,
    dynamic_batching: { max_queue_delay_microseconds: 0 },
    max_queue_size: 4096,
  });
  const gateway = await startInferenceGateway(
    parseEnv(
      "inference-gateway",
      inferenceEnv,
      serviceEnv(handle.url, ns, dir, { NEARHUB_MODEL_DIR: join(dir, "models") }),
    ),
    { logger: silentLogger },
  );
  const load = await LoadGenerator.start(adminAuth(ns));
  const target = `127.0.0.1:${gateway.grpcPort}`;
  try {
    const input = seededFloats(64, 11);
    const request = (modelName: string) =>
      toBinary(
        ModelInferRequestSchema,
        create(ModelInferRequestSchema, {
          modelName,
          inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }],
          rawInputContents: [new Uint8Array(input.buffer)],
        }),
      );

    // First-load time: the first request loads the model (fetch, session, worker).
    const client = createClient(GRPCInferenceService, target, { timeoutMs: 30_000, metadata: adminAuth(ns) });
    const t0 = performance.now();
    const first = await client.modelInfer(fromBinary(ModelInferRequestSchema, request("mlp")));
    const firstLoadMs = performance.now() - t0;
    await client.modelInfer(fromBinary(ModelInferRequestSchema, request("mlp_batched")));
    const streamResponse = toBinary(
      ModelStreamInferResponseSchema,
      create(ModelStreamInferResponseSchema, { inferResponse: first }),
    );
    const echo = await echoServer(toBinary(ModelInferResponseSchema, first), streamResponse);
    const echoTarget = `127.0.0.1:${echo.port}`;

    console.log(`inference: tiny MLP 64→256→10 FP32, loopback, ${DURATION_MS} ms per point, 2-core box shared`);
    console.log(`  first-load time (lazy load on first request, local folder): ${fmt(firstLoadMs, 1)} ms`);

    const floor = await inProcess(model);
    console.log("in-process onnxruntime-node (compute floor):");
    console.log(row("batch 1, sequential", floor.single, "run/s"));
    console.log(row("batch 64, sequential", floor.batched, "run/s", 64));

    const unaryPath = "/inference.GRPCInferenceService/ModelInfer";
    const streamPath = "/inference.GRPCInferenceService/ModelStreamInfer";
    // Unary points are measured interleaved (echo, then the gateway, per concurrency), so a
    // change in the machine's load hits the floor and the gateway alike; printed by section.
    const echoUnary = new Map<number, LoadResult>();
    const results: Record<string, Map<number, LoadResult>> = {};
    const sections = [
      ["gateway unary, no batching", "mlp", "unary"],
      ["gateway unary, dynamic batching", "mlp_batched", "unary"],
      ["gateway stream, no batching", "mlp", "stream"],
      ["gateway stream, dynamic batching", "mlp_batched", "stream"],
    ] as const;
    for (const [label] of sections) results[label] = new Map();
    for (const c of CONCURRENCY) {
      echoUnary.set(
        c,
        await load.run({ target: echoTarget, path: unaryPath, kind: "unary", request: request("mlp"), concurrency: c }),
      );
      for (const [label, name, kind] of sections) {
        if (kind !== "unary") continue;
        results[label]?.set(
          c,
          await load.run({ target, path: unaryPath, kind, request: request(name), concurrency: c }),
        );
      }
    }
    const echoStream = await load.run({
      target: echoTarget,
      path: streamPath,
      kind: "stream",
      request: request("mlp"),
      concurrency: 64,
    });
    for (const [label, name, kind] of sections) {
      if (kind !== "stream") continue;
      for (const c of CONCURRENCY) {
        results[label]?.set(
          c,
          await load.run({ target, path: streamPath, kind, request: request(name), concurrency: c }),
        );
      }
    }

    console.log("bare grpc-js echo (same request decode, same response size):");
    for (const [c, r] of echoUnary) console.log(row(`unary c=${c}`, r));
    console.log(row("stream c=64", echoStream));
    for (const [label, , kind] of sections) {
      console.log(`${label}:`);
      for (const [c, r] of results[label] ?? []) {
        const ratio = kind === "unary" ? `  ${fmt(r.throughput / (echoUnary.get(c)?.throughput ?? NaN), 2)}× echo` : "";
        console.log(row(`c=${c}`, r) + ratio);
      }
    }

    console.log("open loop, 1,000 requests/s offered (latency from the scheduled send time):");
    const open: Record<string, LoadResult> = {};
    for (const [label, name, to] of [
      ["bare grpc-js echo", "mlp", echoTarget],
      ["mlp (no batching)", "mlp", target],
      ["mlp_batched", "mlp_batched", target],
    ] as const) {
      const r = await load.run({
        target: to,
        path: unaryPath,
        kind: "unary",
        request: request(name),
        concurrency: 0,
        rate: 1000,
        // A longer warm-up at the offered rate lets the previous point's backlog and garbage go.
        warmupMs: 1000,
        durationMs: 3000,
      });
      open[label] = r;
      console.log(`${row(label, r)}  generator send lag p99 ${fmt(r.sendLagP99 ?? NaN, 2)} ms`);
    }

    const bestUnary = Math.max(
      ...[
        ...(results["gateway unary, no batching"]?.values() ?? []),
        ...(results["gateway unary, dynamic batching"]?.values() ?? []),
      ].map((r) => r.throughput),
    );
    const bestEcho = Math.max(...[...echoUnary.values()].map((r) => r.throughput));
    const bestStream = Math.max(
      ...[...(results["gateway stream, dynamic batching"]?.values() ?? [])].map((r) => r.throughput),
    );
    console.log("targets:");
    console.log(
      `  unary throughput vs echo floor: ${fmt(bestUnary)} / ${fmt(bestEcho)} = ${fmt(bestUnary / bestEcho, 2)} (target ≥ 0.80)`,
    );
    console.log(
      `  p99 at 1,000 req/s open loop: ${fmt(open["mlp (no batching)"]?.p99 ?? NaN, 2)} ms unbatched, ${fmt(open["mlp_batched"]?.p99 ?? NaN, 2)} ms batched, ${fmt(open["bare grpc-js echo"]?.p99 ?? NaN, 2)} ms echo (target ≤ 10 ms)`,
    );
    console.log(`  streaming with batching: ${fmt(bestStream)} inferences/s (target ≥ 8,000)`);
    console.log(`  gateway vs in-process compute floor (batch 1): ${fmt(bestUnary / floor.single.throughput, 2)}×`);
    client.$close();
    echo.stop();
  } finally {
    load.stop();
    await gateway.stop();
    await deleteNamespace(handle.url, ns).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}
