/**
 * The servers bench/inference.ts measures, in a process of their own: the inference gateway and
 * the bare grpc-js echo server (the floor). They share the process, so both run with the same
 * runtime flags ({@link SERVER_NODE_FLAGS}) and neither shares an event loop with the bench
 * itself or with the load generator. Forked by the bench; it answers one `ready` message with
 * the addresses, then serves `loop-start`/`loop-stop` (event-loop delay and CPU time over a window) and
 * `stop` (stops the gateway and removes what it created).
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  GRPCInferenceService,
  ModelInferRequestSchema,
  ModelInferResponseSchema,
  ModelStreamInferResponseSchema,
} from "@nearhub/proto/inference";
import { createClient, parseEnv, silentLogger, startTelemetry } from "@nearhub/platform";
import { inferenceEnv, mlpModel, seededFloats, startInferenceGateway } from "@nearhub/inference-gateway";
import { adminAuth, nats, deleteNamespace, serviceEnv, uniqueNamespace } from "@nearhub/testing";

/**
 * V8 flags of the server process (and of the load generator). A young generation of up to
 * 32 MiB instead of 16 MiB: request handling allocates short-lived objects at a high rate, and
 * a larger nursery scavenges less often for the same survivors (measured here: about a third
 * less CPU per call for the echo and the gateway alike). A deployment sets the same flag.
 */
export const SERVER_NODE_FLAGS = ["--max-semi-space-size=32"];

/**
 * Added to {@link SERVER_NODE_FLAGS} for the servers only: the bench asks for a full collection
 * before each open-loop point (`gc`), so the garbage of the closed-loop points before it (tens of
 * thousands of calls a second) is not collected inside the 1,000 req/s window it measures. Seen
 * with --trace-gc: a Mark-Compact of 116 → 33 MB paused the gateway for 248 ms mid-point.
 */
export const SERVER_ONLY_FLAGS = ["--expose-gc"];

/** Parent → servers. */
export type ServersRequest = { type: "loop-start" } | { type: "loop-stop" } | { type: "gc" } | { type: "stop" };

/** Servers → parent. */
export type ServersMessage =
  | { type: "skip"; reason: string }
  | {
      type: "ready";
      /** The gateway's gRPC address. */
      target: string;
      echoTarget: string;
      /** Sent with every call (admin credentials of the bench's namespace). */
      metadata: Record<string, string>;
      /** The first request's time: it loads the model (fetch, session, worker). */
      firstLoadMs: number;
    }
  | {
      type: "loop";
      p99: number;
      /** The process's CPU time (all threads: event loop, model workers) over the window, µs. */
      cpuUs: number;
    }
  | { type: "collected" }
  | { type: "stopped" };

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
  // The echo's two methods: the request decoded as the gateway decodes it, the response sent as-is.
  const method = <R extends typeof ModelInferResponseSchema | typeof ModelStreamInferResponseSchema>(
    name: string,
    stream: boolean,
    responseSchema: R,
  ) => ({
    path: `/inference.GRPCInferenceService/${name}`,
    requestStream: stream,
    responseStream: stream,
    requestDeserialize: (b: Buffer) => fromBinary(ModelInferRequestSchema, b),
    requestSerialize: (m: unknown) => Buffer.from(toBinary(ModelInferRequestSchema, m as never)),
    responseSerialize: (m: unknown) => Buffer.from(toBinary(responseSchema, m as never)),
    responseDeserialize: (b: Buffer) => fromBinary(responseSchema, b),
  });
  server.addService(
    {
      ModelInfer: method("ModelInfer", false, ModelInferResponseSchema),
      ModelStreamInfer: method("ModelStreamInfer", true, ModelStreamInferResponseSchema),
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

/** The request the bench sends: one row of 64 FP32 values as raw_input_contents. */
export function benchRequest(modelName: string, input = seededFloats(64, 11)): Uint8Array {
  return toBinary(
    ModelInferRequestSchema,
    create(ModelInferRequestSchema, {
      modelName,
      inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }],
      rawInputContents: [new Uint8Array(input.buffer, input.byteOffset, input.byteLength)],
    }),
  );
}

async function serve(send: (m: ServersMessage) => void): Promise<void> {
  const handle = await nats().catch(() => undefined);
  if (!handle) {
    send({ type: "skip", reason: "no NATS server: set NATS_URL or install nats-server" });
    return;
  }
  // As in the service's main: the OpenTelemetry SDK is on (no exporter here, as by default).
  startTelemetry({ serviceName: "inference-gateway" });
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
  const target = `127.0.0.1:${gateway.grpcPort}`;
  const metadata = adminAuth(ns);
  const client = createClient(GRPCInferenceService, target, { timeoutMs: 30_000, metadata });
  const t0 = performance.now();
  const first = await client.modelInfer(fromBinary(ModelInferRequestSchema, benchRequest("mlp")));
  const firstLoadMs = performance.now() - t0;
  await client.modelInfer(fromBinary(ModelInferRequestSchema, benchRequest("mlp_batched")));
  client.$close();
  const echo = await echoServer(
    toBinary(ModelInferResponseSchema, first),
    toBinary(ModelStreamInferResponseSchema, create(ModelStreamInferResponseSchema, { inferResponse: first })),
  );
  const loop = monitorEventLoopDelay({ resolution: 1 });
  let cpuAtStart = process.cpuUsage();
  process.on("message", (m: ServersRequest) => {
    switch (m.type) {
      case "loop-start":
        loop.reset();
        loop.enable();
        cpuAtStart = process.cpuUsage();
        break;
      case "loop-stop": {
        loop.disable();
        const cpu = process.cpuUsage(cpuAtStart);
        send({ type: "loop", p99: loop.count > 0 ? loop.percentile(99) / 1e6 : NaN, cpuUs: cpu.user + cpu.system });
        break;
      }
      case "gc":
        (globalThis as { gc?: () => void }).gc?.();
        send({ type: "collected" });
        break;
      case "stop":
        echo.stop();
        void gateway
          .stop()
          .then(() => deleteNamespace(handle.url, ns).catch(() => undefined))
          .then(() => rm(dir, { recursive: true, force: true }))
          .finally(() => {
            send({ type: "stopped" });
            process.disconnect();
          });
        break;
    }
  });
  send({ type: "ready", target, echoTarget: `127.0.0.1:${echo.port}`, metadata, firstLoadMs });
}

// As a child process: start the servers, then follow the parent's messages.
if (process.send && process.env["NEARHUB_BENCH_SERVERS"] === "1") {
  const send = (m: ServersMessage) => process.send?.(m);
  serve(send).catch((error: unknown) => {
    process.stderr.write(`inference servers: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  });
}
