import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Code, type NearhubError, createClient, parseEnv, type Client, type ServiceHost } from "@nearhub/platform";
import { GRPCInferenceService } from "@nearhub/proto/inference";
import {
  addModel,
  inferenceEnv,
  mlpModel,
  seededFloats,
  startInferenceGateway,
  type InferenceGateway,
} from "@nearhub/inference-gateway";
import { startStorage, storageEnv } from "@nearhub/storage";
import * as ort from "onnxruntime-node";
import {
  deleteNamespace,
  eventually,
  nats,
  serviceEnv,
  tempDir,
  uniqueNamespace,
  adminAuth,
  adminToken,
} from "./harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));

/** The first suite's namespace; its CLI runs act as the namespace's administrator. */
const SERVE_NS = uniqueNamespace();

/** Runs the nearhub CLI to completion, as a user would (async: the services run in this process). */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(
    process.execPath,
    ["--conditions=development", "--import", "tsx", "packages/cli/src/bin.ts", ...args],
    {
      cwd: root,
      env: {
        ...process.env,
        NEARHUB_STORAGE_ADDR: "",
        NEARHUB_INFERENCE_ADDR: "",
        NEARHUB_TOKEN: adminToken(SERVE_NS),
      },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 120_000,
    },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

describe("nearhub model serve → registry in storage → inference gateway", { timeout: 240_000 }, () => {
  let natsUrl: string;
  const ns = SERVE_NS;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let storage: ServiceHost;
  let gateway: InferenceGateway;
  let client: Client<typeof GRPCInferenceService>;
  let storageAddr: string;
  let gatewayAddr: string;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    storage = await startStorage(parseEnv("storage", storageEnv, serviceEnv(natsUrl, ns, join(dir.path, "storage"))));
    storageAddr = `127.0.0.1:${storage.grpcPort}`;
    gateway = await startInferenceGateway(
      parseEnv(
        "inference-gateway",
        inferenceEnv,
        serviceEnv(natsUrl, ns, join(dir.path, "gateway"), { NEARHUB_STORAGE_ADDR: storageAddr }),
      ),
    );
    gatewayAddr = `127.0.0.1:${gateway.grpcPort}`;
    client = createClient(GRPCInferenceService, gatewayAddr, { metadata: adminAuth(ns), timeoutMs: 60_000 });
  });

  after(async () => {
    client?.$close();
    await gateway?.stop();
    await storage?.stop();
    await deleteNamespace(natsUrl, ns).catch(() => undefined);
    await dir?.cleanup();
  });

  test("serve publishes a model the gateway loads from storage; serving again adds a version", async () => {
    const addFile = join(dir.path, "add.onnx");
    await writeFile(addFile, addModel("FP32", 4));
    const first = await cli([
      "model",
      "serve",
      addFile,
      "--name",
      "team/adder",
      "--max-batch-size",
      "8",
      "--batching",
      "--max-queue-delay-us",
      "500",
      "--storage",
      storageAddr,
      "--load",
      "--inference",
      gatewayAddr,
    ]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(
      first.stdout,
      /model team--adder version 1 ready at .*: inputs x FP32\[-1,4\], y FP32\[-1,4\]; outputs z FP32\[-1,4\]/,
    );

    const response = await client.modelInfer({
      modelName: "team--adder",
      inputs: [
        { name: "x", datatype: "FP32", shape: [2n, 4n], contents: { fp32Contents: [1, 2, 3, 4, 5, 6, 7, 8] } },
        { name: "y", datatype: "FP32", shape: [2n, 4n], contents: { fp32Contents: [1, 1, 1, 1, 2, 2, 2, 2] } },
      ],
    });
    assert.equal(response.modelVersion, "1");
    assert.deepEqual(response.outputs[0]?.contents?.fp32Contents, [2, 3, 4, 5, 7, 8, 9, 10]);

    // A second file under the same name is version 2; requests without a version get it.
    const mlp = mlpModel(8, 16, 3, 21);
    const mlpFile = join(dir.path, "mlp.onnx");
    await writeFile(mlpFile, mlp);
    const second = await cli([
      "model",
      "serve",
      mlpFile,
      "--name",
      "team/adder",
      "--max-batch-size",
      "4",
      "--storage",
      storageAddr,
      "--json",
    ]);
    assert.equal(second.code, 0, second.stderr);
    const input = seededFloats(8, 4);
    // The gateway refreshes its model listing in the background (at most a second old), so the
    // new version takes over within moments rather than on the very next request.
    const v2 = await eventually(
      () =>
        client
          .modelInfer({
            modelName: "team--adder",
            inputs: [{ name: "input", datatype: "FP32", shape: [1n, 8n] }],
            rawInputContents: [new Uint8Array(input.buffer)],
          })
          .then(
            (r) => (r.modelVersion === "2" ? r : undefined),
            () => undefined,
          ),
      10_000,
      "version 2 to serve requests without a version",
    );
    assert.equal(v2.modelVersion, "2");
    const session = await ort.InferenceSession.create(mlp);
    const expected = (await session.run({ input: new ort.Tensor("float32", input, [1, 8]) }))["logits"];
    await session.release();
    assert.deepEqual(
      new Float32Array(new Uint8Array(v2.rawOutputContents[0] ?? new Uint8Array()).buffer),
      expected?.data,
    );
    // Version 1 still answers when asked for.
    const index = await client.repositoryIndex({});
    assert.deepEqual(
      index.models.filter((m) => m.name === "team--adder").map((m) => [m.version, m.state]),
      [
        ["1", "READY"],
        ["2", "READY"],
      ],
    );
    const stats = await client.modelStatistics({ name: "team--adder", version: "2" });
    assert.equal(stats.modelStats[0]?.inferenceCount, 1n);
  });

  test("serve refuses bad usage with exit code 2 and what to fix", async () => {
    const missing = await cli(["model", "serve", join(dir.path, "nope.onnx"), "--name", "x", "--storage", storageAddr]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /does not exist/);
    const noName = await cli(["model", "serve", join(dir.path, "add.onnx"), "--storage", storageAddr]);
    assert.equal(noName.code, 2);
    assert.match(noName.stderr, /needs --name NAME/);
    const batchingWithoutBatch = await cli([
      "model",
      "serve",
      join(dir.path, "add.onnx"),
      "--name",
      "x",
      "--batching",
      "--storage",
      storageAddr,
    ]);
    assert.equal(batchingWithoutBatch.code, 2);
    assert.match(batchingWithoutBatch.stderr, /needs --max-batch-size/);
    const traversal = await cli([
      "model",
      "serve",
      join(dir.path, "add.onnx"),
      "--name",
      "../../etc",
      "--storage",
      storageAddr,
    ]);
    assert.notEqual(traversal.code, 0);
    assert.match(traversal.stderr, /must be owner\/name or name|invalid/);
  });
});

describe("remote routing: gateways as KServe v2 backends of a gateway", { timeout: 240_000 }, () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let backends: InferenceGateway[] = [];
  let front: InferenceGateway;
  let client: Client<typeof GRPCInferenceService>;
  const stopped = new Set<InferenceGateway>();

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const models = join(dir.path, "models");
    await mkdir(join(models, "remote_add", "1"), { recursive: true });
    await writeFile(join(models, "remote_add", "1", "model.onnx"), addModel("FP32", 4));
    await writeFile(join(models, "remote_add", "1", "nearhub-model.json"), JSON.stringify({ max_batch_size: 8 }));
    const env = (name: string, extra: Record<string, string> = {}) =>
      parseEnv("inference-gateway", inferenceEnv, serviceEnv(natsUrl, ns, join(dir.path, name), extra));
    backends = [
      await startInferenceGateway(env("b1", { NEARHUB_MODEL_DIR: models })),
      await startInferenceGateway(env("b2", { NEARHUB_MODEL_DIR: models })),
    ];
    front = await startInferenceGateway(
      env("front", {
        NEARHUB_INFERENCE_REMOTES: backends.map((b) => `127.0.0.1:${b.grpcPort}`).join(","),
        // Only the start-up probe: failover below must come from the unsent-retry path.
        NEARHUB_INFERENCE_PROBE_INTERVAL_MS: "3600000",
      }),
    );
    client = createClient(GRPCInferenceService, `127.0.0.1:${front.grpcPort}`, {
      metadata: adminAuth(ns),
      timeoutMs: 60_000,
    });
  });

  after(async () => {
    client?.$close();
    await front?.stop();
    for (const b of backends) if (!stopped.has(b)) await b.stop();
    await deleteNamespace(natsUrl, ns).catch(() => undefined);
    await dir?.cleanup();
  });

  const request = (i: number) => ({
    modelName: "remote_add",
    id: `r${i}`,
    inputs: [
      { name: "x", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [i, i, i, i] } },
      { name: "y", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } },
    ],
  });

  test("requests for a model only the backends hold are balanced across them", async () => {
    const index = await client.repositoryIndex({});
    assert.ok(index.models.some((m) => m.name === "remote_add" && /^remote 127\.0\.0\.1:/.test(m.reason)));
    assert.equal((await client.modelReady({ name: "remote_add" })).ready, true);
    const responses = await Promise.all(Array.from({ length: 16 }, (_, i) => client.modelInfer(request(i))));
    responses.forEach((r, i) => {
      assert.equal(r.id, `r${i}`);
      assert.deepEqual(r.outputs[0]?.contents?.fp32Contents, [i + 1, i + 2, i + 3, i + 4]);
    });
    const counts = await Promise.all(
      backends.map(async (b) => {
        const c = createClient(GRPCInferenceService, `127.0.0.1:${b.grpcPort}`, { metadata: adminAuth(ns) });
        try {
          return Number((await c.modelStatistics({ name: "remote_add" })).modelStats[0]?.inferenceCount ?? 0n);
        } finally {
          c.$close();
        }
      }),
    );
    assert.equal(counts[0]! + counts[1]!, 16);
    assert.ok(counts[0]! > 0 && counts[1]! > 0, `both backends served (${counts.join(" + ")})`);
  });

  test("a request the backend refused is answered as is, not retried elsewhere", async () => {
    const failsBefore = backends.map((b) => b.models.statistics("remote_add")[0]?.stats.fail.count ?? 0);
    await assert.rejects(
      client.modelInfer({
        ...request(0),
        inputs: [request(0).inputs[0]!, { ...request(0).inputs[1]!, shape: [1n, 5n] }],
      }),
      (e: NearhubError) => e.code === Code.InvalidArgument && /dimension 1 .* must be 4/.test(e.rawMessage),
    );
    const failsAfter = backends.map((b) => b.models.statistics("remote_add")[0]?.stats.fail.count ?? 0);
    assert.equal(failsAfter[0]! + failsAfter[1]! - failsBefore[0]! - failsBefore[1]!, 1);
  });

  test("when a backend goes away, requests fail over to the other one", async () => {
    const gone = backends[0]!;
    await gone.stop();
    stopped.add(gone);
    for (let i = 0; i < 6; i++) {
      const r = await client.modelInfer(request(i));
      assert.deepEqual(r.outputs[0]?.contents?.fp32Contents, [i + 1, i + 2, i + 3, i + 4]);
    }
    const status = front.remotes?.status() ?? [];
    assert.equal(status[0]?.healthy, false);
    assert.equal(status[1]?.healthy, true);
    await assert.rejects(
      client.modelInfer({ ...request(0), modelName: "nowhere" }),
      (e: NearhubError) => e.code === Code.NotFound,
    );
  });
});

describe("remote backends registered through the KV bucket with heartbeats", { timeout: 240_000 }, () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let backend: InferenceGateway | undefined;
  let front: InferenceGateway;
  let client: Client<typeof GRPCInferenceService>;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const models = join(dir.path, "models");
    await mkdir(join(models, "announced", "1"), { recursive: true });
    await writeFile(join(models, "announced", "1", "model.onnx"), addModel("FP32", 4));
    await writeFile(join(models, "announced", "1", "nearhub-model.json"), JSON.stringify({ max_batch_size: 8 }));
    const env = (name: string, extra: Record<string, string>) =>
      parseEnv("inference-gateway", inferenceEnv, serviceEnv(natsUrl, ns, join(dir.path, name), extra));
    front = await startInferenceGateway(
      env("front", { NEARHUB_INFERENCE_DISCOVER: "true", NEARHUB_INFERENCE_PROBE_INTERVAL_MS: "200" }),
    );
    backend = await startInferenceGateway(
      env("backend", { NEARHUB_MODEL_DIR: models, NEARHUB_INFERENCE_ADVERTISE_HOST: "127.0.0.1" }),
    );
    client = createClient(GRPCInferenceService, `127.0.0.1:${front.grpcPort}`, {
      metadata: adminAuth(ns),
      timeoutMs: 60_000,
    });
  });

  after(async () => {
    client?.$close();
    await front?.stop();
    await backend?.stop();
    await deleteNamespace(natsUrl, ns).catch(() => undefined);
    await dir?.cleanup();
  });

  test("a gateway that announces itself is routed to, and dropped when it stops", async () => {
    const address = `127.0.0.1:${backend!.grpcPort}`;
    await eventually(async () =>
      front.remotes?.status().some((s) => s.address === address && s.healthy) ? true : undefined,
    );
    const r = await client.modelInfer({
      modelName: "announced",
      inputs: [
        { name: "x", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } },
        { name: "y", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 1, 1, 1] } },
      ],
    });
    assert.deepEqual(r.outputs[0]?.contents?.fp32Contents, [2, 3, 4, 5]);
    await backend!.stop();
    backend = undefined;
    await eventually(async () => (front.remotes?.status().length === 0 ? true : undefined));
    await assert.rejects(
      client.modelInfer({ modelName: "announced", inputs: [] }),
      (e: NearhubError) => e.code === Code.NotFound,
    );
  });
});
