import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, Names, NearhubError, createClient, parseEnv, type Client } from "@nearhub/platform";
import { GRPCInferenceService, type ModelInferResponse } from "@nearhub/proto/inference";
import { adminAuth, deleteNamespace, nats, serviceEnv, tempDir, uniqueNamespace } from "@nearhub/testing";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect as natsConnect } from "@nats-io/transport-node";
import * as ort from "onnxruntime-node";
import { inferenceEnv } from "./config.js";
import { addModel, identityModel, mlpModel, seededFloats, stringIdentityModel } from "./onnx-model-builder.js";
import { startInferenceGateway, type InferenceGateway } from "./service.js";
import { encodeRawBytes } from "./tensor-codec.js";

async function writeModel(root: string, name: string, version: string, bytes: Uint8Array, config: object) {
  const dir = join(root, name, version);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "model.onnx"), bytes);
  await writeFile(join(dir, "nearhub-model.json"), JSON.stringify(config));
}

function raw(array: ArrayBufferView): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

/** A plain Uint8Array copy (the client hands out Buffers). */
function bytesOf(bytes: Uint8Array | undefined): Uint8Array {
  assert.ok(bytes, "expected raw output bytes");
  return new Uint8Array(bytes);
}

function floats(bytes: Uint8Array | undefined): Float32Array {
  assert.ok(bytes, "expected raw output bytes");
  return new Float32Array(new Uint8Array(bytes).buffer);
}

async function rejectsWith(promise: Promise<unknown>, code: Code, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof NearhubError, `expected a NearhubError, got ${String(error)}`);
    assert.equal(error.code, code, `expected code ${Code[code]}, got ${Code[error.code]}: ${error.rawMessage}`);
    assert.match(error.rawMessage, pattern);
    return true;
  });
}

describe("inference gateway over gRPC with ONNX Runtime", { timeout: 120_000 }, () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let gateway: InferenceGateway;
  let client: Client<typeof GRPCInferenceService>;
  const mlpBytes = mlpModel(64, 256, 10);

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const models = join(dir.path, "models");
    await writeModel(models, "add", "1", addModel("FP32", 4), { max_batch_size: 8 });
    await writeModel(models, "add_int64", "1", addModel("INT64", 4), { max_batch_size: 8 });
    await writeModel(models, "mlp", "1", mlpBytes, {
      max_batch_size: 64,
      dynamic_batching: { preferred_batch_size: [32], max_queue_delay_microseconds: 200_000 },
    });
    await writeModel(models, "text", "1", stringIdentityModel(), { max_batch_size: 8 });
    for (const datatype of [
      "BOOL",
      "UINT8",
      "UINT16",
      "UINT32",
      "UINT64",
      "INT8",
      "INT16",
      "INT32",
      "INT64",
      "FP16",
      "FP64",
    ] as const) {
      await writeModel(models, `id_${datatype.toLowerCase()}`, "1", identityModel(datatype, 3), { max_batch_size: 4 });
    }
    // Two versions: requests without a version get the newest.
    await writeModel(models, "versioned", "1", addModel("FP32", 4), { max_batch_size: 2 });
    await writeModel(models, "versioned", "2", addModel("FP32", 4), { max_batch_size: 2 });
    // A declared input the graph does not have: the load fails with the reason.
    await writeModel(models, "broken", "1", addModel("FP32", 4), {
      max_batch_size: 2,
      inputs: [{ name: "nope", datatype: "FP32", dims: [4] }],
    });
    await mkdir(join(models, "garbage", "1"), { recursive: true });
    await writeFile(join(models, "garbage", "1", "model.onnx"), "this is not an onnx model");
    const config = parseEnv(
      "inference-gateway",
      inferenceEnv,
      serviceEnv(natsUrl, ns, dir.path, { NEARHUB_MODEL_DIR: models }),
    );
    gateway = await startInferenceGateway(config);
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
  });

  test("server liveness, readiness and metadata", async () => {
    assert.equal((await client.serverLive({})).live, true);
    assert.equal((await client.serverReady({})).ready, true);
    const meta = await client.serverMetadata({});
    assert.equal(meta.name, "nearhub");
    assert.ok(meta.extensions.includes("model_repository"));
  });

  test("models load lazily on the first request and the index shows it", async () => {
    const before = await client.repositoryIndex({});
    const row = before.models.find((m) => m.name === "add");
    assert.equal(row?.state, "UNAVAILABLE");
    assert.equal((await client.modelReady({ name: "add" })).ready, false);
    const response = await client.modelInfer({
      modelName: "add",
      id: "req-1",
      inputs: [
        { name: "x", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } },
        { name: "y", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [10, 20, 30, 40] } },
      ],
    });
    assert.equal(response.id, "req-1");
    assert.equal(response.modelVersion, "1");
    assert.deepEqual(response.outputs[0]?.contents?.fp32Contents, [11, 22, 33, 44]);
    assert.deepEqual(response.outputs[0]?.shape, [1n, 4n]);
    assert.equal((await client.modelReady({ name: "add" })).ready, true);
    const ready = await client.repositoryIndex({ ready: true });
    assert.deepEqual(
      ready.models.map((m) => [m.name, m.state]),
      [["add", "READY"]],
    );
  });

  test("MLP with raw input contents answers raw outputs equal to onnxruntime-node in process", async () => {
    const input = seededFloats(3 * 64, 99);
    const response = await client.modelInfer({
      modelName: "mlp",
      inputs: [{ name: "input", datatype: "FP32", shape: [3n, 64n] }],
      rawInputContents: [raw(input)],
    });
    assert.equal(response.outputs[0]?.datatype, "FP32");
    assert.deepEqual(response.outputs[0]?.shape, [3n, 10n]);
    const session = await ort.InferenceSession.create(mlpBytes);
    const expected = (await session.run({ input: new ort.Tensor("float32", input, [3, 64]) }))["logits"];
    await session.release();
    assert.deepEqual(floats(response.rawOutputContents[0]), expected?.data);
  });

  test("INT64 contents and BYTES contents and raw BYTES round-trip", async () => {
    const ints = await client.modelInfer({
      modelName: "add_int64",
      inputs: [
        { name: "x", datatype: "INT64", shape: [1n, 4n], contents: { int64Contents: [1n, -2n, 3n, 1n << 40n] } },
        { name: "y", datatype: "INT64", shape: [1n, 4n], contents: { int64Contents: [1n, 1n, 1n, 1n] } },
      ],
    });
    assert.deepEqual(ints.outputs[0]?.contents?.int64Contents, [2n, -1n, 4n, (1n << 40n) + 1n]);

    const enc = new TextEncoder();
    const text = await client.modelInfer({
      modelName: "text",
      inputs: [
        {
          name: "text_in",
          datatype: "BYTES",
          shape: [2n, 1n],
          contents: { bytesContents: [enc.encode("héllo"), enc.encode("")] },
        },
      ],
    });
    assert.deepEqual(
      text.outputs[0]?.contents?.bytesContents.map((b) => new TextDecoder().decode(b)),
      ["héllo", ""],
    );
    const rawText = await client.modelInfer({
      modelName: "text",
      inputs: [{ name: "text_in", datatype: "BYTES", shape: [3n, 1n] }],
      rawInputContents: [encodeRawBytes(["a", "bc", "€"])],
    });
    assert.deepEqual(bytesOf(rawText.rawOutputContents[0]), encodeRawBytes(["a", "bc", "€"]));
  });

  test("every datatype round-trips through raw contents, and typed contents where the protocol has a field", async () => {
    const cases = [
      {
        datatype: "BOOL",
        data: Uint8Array.from([1, 0, 1]),
        contents: { boolContents: [true, false, true] },
        field: "boolContents",
      },
      {
        datatype: "UINT8",
        data: Uint8Array.from([0, 7, 255]),
        contents: { uintContents: [0, 7, 255] },
        field: "uintContents",
      },
      {
        datatype: "UINT16",
        data: Uint16Array.from([0, 7, 65535]),
        contents: { uintContents: [0, 7, 65535] },
        field: "uintContents",
      },
      {
        datatype: "UINT32",
        data: Uint32Array.from([0, 7, 4294967295]),
        contents: { uintContents: [0, 7, 4294967295] },
        field: "uintContents",
      },
      {
        datatype: "UINT64",
        data: BigUint64Array.from([0n, 7n, 1n << 63n]),
        contents: { uint64Contents: [0n, 7n, 1n << 63n] },
        field: "uint64Contents",
      },
      {
        datatype: "INT8",
        data: Int8Array.from([-128, 0, 127]),
        contents: { intContents: [-128, 0, 127] },
        field: "intContents",
      },
      {
        datatype: "INT16",
        data: Int16Array.from([-32768, 0, 32767]),
        contents: { intContents: [-32768, 0, 32767] },
        field: "intContents",
      },
      {
        datatype: "INT32",
        data: Int32Array.from([-5, 0, 5]),
        contents: { intContents: [-5, 0, 5] },
        field: "intContents",
      },
      {
        datatype: "INT64",
        data: BigInt64Array.from([-5n, 0n, 1n << 62n]),
        contents: { int64Contents: [-5n, 0n, 1n << 62n] },
        field: "int64Contents",
      },
      { datatype: "FP16", data: Uint16Array.from([0x3c00, 0xc000, 0x7bff]) },
      {
        datatype: "FP64",
        data: Float64Array.from([Math.PI, -0.5, 1e300]),
        contents: { fp64Contents: [Math.PI, -0.5, 1e300] },
        field: "fp64Contents",
      },
    ] as const;
    for (const c of cases as unknown as Array<{
      datatype: string;
      data: ArrayBufferView;
      contents?: Record<string, unknown>;
      field?: string;
    }>) {
      const modelName = `id_${c.datatype.toLowerCase()}`;
      const viaRaw = await client.modelInfer({
        modelName,
        inputs: [{ name: "input", datatype: c.datatype, shape: [1n, 3n] }],
        rawInputContents: [raw(c.data)],
      });
      assert.equal(viaRaw.outputs[0]?.datatype, c.datatype, modelName);
      assert.deepEqual(bytesOf(viaRaw.rawOutputContents[0]), new Uint8Array(raw(c.data)), `${modelName} raw`);
      if (c.contents && c.field) {
        const viaContents = await client.modelInfer({
          modelName,
          inputs: [{ name: "input", datatype: c.datatype, shape: [1n, 3n], contents: c.contents }],
        });
        const got = viaContents.outputs[0]?.contents as unknown as Record<string, unknown>;
        assert.deepEqual(got[c.field], c.contents[c.field], `${modelName} contents`);
      }
    }
  });

  test("concurrent requests are batched: fewer executions than requests, each answer its own rows", async () => {
    const n = 32;
    const inputs = Array.from({ length: n }, (_, i) => seededFloats(64, 1000 + i));
    const responses = await Promise.all(
      inputs.map((input, i) =>
        client.modelInfer({
          modelName: "mlp",
          id: `b${i}`,
          inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }],
          rawInputContents: [raw(input)],
        }),
      ),
    );
    const session = await ort.InferenceSession.create(mlpBytes);
    for (let i = 0; i < n; i++) {
      const expected = (await session.run({ input: new ort.Tensor("float32", inputs[i] as Float32Array, [1, 64]) }))[
        "logits"
      ];
      const r = responses[i] as ModelInferResponse;
      assert.equal(r.id, `b${i}`);
      const got = floats(r.rawOutputContents[0]);
      const want = expected?.data as Float32Array;
      // Batched execution may use other kernels: equal to float32 rounding.
      for (let k = 0; k < 10; k++) assert.ok(Math.abs((got[k] as number) - (want[k] as number)) < 1e-5, `row ${i}`);
    }
    await session.release();
    const stats = (await client.modelStatistics({ name: "mlp" })).modelStats[0];
    assert.ok(stats);
    assert.equal(stats.inferenceCount, BigInt(n + 3)); // + the 3-row request of the raw MLP test
    assert.ok(
      stats.executionCount < BigInt(n),
      `expected batching, got ${stats.executionCount} executions for ${n} requests`,
    );
    assert.ok(stats.batchStats.some((b) => b.batchSize > 1n));
  });

  test("model metadata reports the batch dimension and the tensors", async () => {
    const meta = await client.modelMetadata({ name: "mlp" });
    assert.equal(meta.platform, "onnxruntime_onnx");
    assert.deepEqual(
      meta.inputs.map((t) => [t.name, t.datatype, t.shape]),
      [["input", "FP32", [-1n, 64n]]],
    );
    assert.deepEqual(
      meta.outputs.map((t) => [t.name, t.datatype, t.shape]),
      [["logits", "FP32", [-1n, 10n]]],
    );
  });

  test("versions: the newest by default, a named one on request, unknown ones NOT_FOUND", async () => {
    const x = { name: "x", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 1, 1, 1] } };
    const y = { ...x, name: "y" };
    assert.equal((await client.modelInfer({ modelName: "versioned", inputs: [x, y] })).modelVersion, "2");
    assert.equal(
      (await client.modelInfer({ modelName: "versioned", modelVersion: "1", inputs: [x, y] })).modelVersion,
      "1",
    );
    await rejectsWith(
      client.modelInfer({ modelName: "versioned", modelVersion: "9", inputs: [x, y] }),
      Code.NotFound,
      /no version 9.*1, 2/,
    );
    await rejectsWith(
      client.modelInfer({ modelName: "versioned", modelVersion: "v1", inputs: [x, y] }),
      Code.InvalidArgument,
      /version.*decimal/,
    );
  });

  test("explicit load and unload; statistics keep counting across them", async () => {
    await client.repositoryModelLoad({ modelName: "text" });
    assert.equal((await client.modelReady({ name: "text" })).ready, true);
    await client.repositoryModelUnload({ modelName: "text" });
    assert.equal((await client.modelReady({ name: "text" })).ready, false);
    const stats = (await client.modelStatistics({ name: "text" })).modelStats[0];
    assert.equal(stats?.inferenceCount, 5n);
    assert.deepEqual(stats?.memoryUsage, []);
    await rejectsWith(client.repositoryModelUnload({ modelName: "ghost" }), Code.NotFound, /not in the repository/);
  });

  test("bad models fail to load with the reason", async () => {
    await rejectsWith(
      client.repositoryModelLoad({ modelName: "broken" }),
      Code.FailedPrecondition,
      /input nope is not in the model/,
    );
    await rejectsWith(
      client.repositoryModelLoad({ modelName: "garbage" }),
      Code.FailedPrecondition,
      /ONNX Runtime cannot load/,
    );
    assert.equal((await client.modelReady({ name: "garbage" })).ready, false);
    const zero = (await client.modelStatistics({ name: "garbage" })).modelStats;
    assert.deepEqual(
      zero.map((m) => [m.name, m.version, m.inferenceCount, m.executionCount]),
      [["garbage", "1", 0n, 0n]],
    );
    await rejectsWith(client.modelStatistics({ name: "ghost" }), Code.NotFound, /not in the repository/);
  });

  test("hostile input answers INVALID_ARGUMENT or NOT_FOUND with what to fix", async () => {
    const x = (over: object = {}) => ({
      name: "x",
      datatype: "FP32",
      shape: [1n, 4n],
      contents: { fp32Contents: [1, 2, 3, 4] },
      ...over,
    });
    const y = { name: "y", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } };
    const cases: Array<[string, () => Promise<unknown>, Code, RegExp]> = [
      [
        "unknown model",
        () => client.modelInfer({ modelName: "nope", inputs: [] }),
        Code.NotFound,
        /not in the repository.*nearhub model serve/,
      ],
      ["no model name", () => client.modelInfer({ inputs: [] }), Code.InvalidArgument, /model_name is required/],
      [
        "path traversal",
        () => client.modelInfer({ modelName: "../../etc", inputs: [] }),
        Code.InvalidArgument,
        /model name .* is invalid/,
      ],
      ["traversal in metadata", () => client.modelMetadata({ name: "a/../../b" }), Code.InvalidArgument, /is invalid/],
      [
        "wrong datatype",
        () => client.modelInfer({ modelName: "add", inputs: [x({ datatype: "INT32" }), y] }),
        Code.InvalidArgument,
        /input x has datatype "INT32"; the model takes FP32/,
      ],
      [
        "unknown datatype",
        () => client.modelInfer({ modelName: "add", inputs: [x({ datatype: "FLOAT" }), y] }),
        Code.InvalidArgument,
        /datatype "FLOAT"/,
      ],
      [
        "wrong rank",
        () => client.modelInfer({ modelName: "add", inputs: [x({ shape: [4n] }), y] }),
        Code.InvalidArgument,
        /rank 1.*rank 2/,
      ],
      [
        "wrong dim",
        () => client.modelInfer({ modelName: "add", inputs: [x({ shape: [1n, 5n] }), y] }),
        Code.InvalidArgument,
        /dimension 1 .* must be 4/,
      ],
      [
        "negative dim",
        () => client.modelInfer({ modelName: "add", inputs: [x({ shape: [-1n, 4n] }), y] }),
        Code.InvalidArgument,
        /must be between 0/,
      ],
      [
        "huge dims",
        () =>
          client.modelInfer({
            modelName: "mlp",
            inputs: [{ name: "input", datatype: "FP32", shape: [1n << 40n, 64n] }],
            rawInputContents: [new Uint8Array(256)],
          }),
        Code.InvalidArgument,
        /must be between 0 and/,
      ],
      [
        "batch above max",
        () => client.modelInfer({ modelName: "add", inputs: [x({ shape: [9n, 4n] }), y] }),
        Code.InvalidArgument,
        /batch size 9 .* max_batch_size 8/,
      ],
      [
        "too few values",
        () => client.modelInfer({ modelName: "add", inputs: [x({ contents: { fp32Contents: [1] } }), y] }),
        Code.InvalidArgument,
        /has 1 values but shape needs 4/,
      ],
      [
        "wrong contents field",
        () => client.modelInfer({ modelName: "add", inputs: [x({ contents: { intContents: [1, 2, 3, 4] } }), y] }),
        Code.InvalidArgument,
        /fp32Contents has 0 values/,
      ],
      [
        "missing input",
        () => client.modelInfer({ modelName: "add", inputs: [x()] }),
        Code.InvalidArgument,
        /takes 2 inputs/,
      ],
      [
        "unknown input",
        () => client.modelInfer({ modelName: "add", inputs: [x(), { ...y, name: "w" }] }),
        Code.InvalidArgument,
        /input y is missing \(got unknown input "w"\)/,
      ],
      [
        "duplicate input",
        () => client.modelInfer({ modelName: "add", inputs: [x(), x()] }),
        Code.InvalidArgument,
        /more than once/,
      ],
      [
        "unknown output",
        () => client.modelInfer({ modelName: "add", inputs: [x(), y], outputs: [{ name: "q" }] }),
        Code.InvalidArgument,
        /requested output "q" is not an output/,
      ],
      [
        "raw of the wrong length",
        () =>
          client.modelInfer({
            modelName: "mlp",
            inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }],
            rawInputContents: [new Uint8Array(255)],
          }),
        Code.InvalidArgument,
        /255 bytes but shape and FP32 need 256/,
      ],
      [
        "raw count mismatch",
        () => client.modelInfer({ modelName: "add", inputs: [x(), y], rawInputContents: [new Uint8Array(16)] }),
        Code.InvalidArgument,
        /raw_input_contents has 1 entries but there are 2 inputs/,
      ],
      [
        "raw and contents",
        () =>
          client.modelInfer({
            modelName: "add",
            inputs: [x(), y],
            rawInputContents: [new Uint8Array(16), new Uint8Array(16)],
          }),
        Code.InvalidArgument,
        /both contents and raw_input_contents/,
      ],
      [
        "FP16 in contents",
        () =>
          client.modelInfer({
            modelName: "id_fp16",
            inputs: [{ name: "input", datatype: "FP16", shape: [1n, 3n], contents: { fp32Contents: [1, 2, 3] } }],
          }),
        Code.InvalidArgument,
        /send it in raw_input_contents/,
      ],
      [
        "INT8 out of range",
        () =>
          client.modelInfer({
            modelName: "id_int8",
            inputs: [{ name: "input", datatype: "INT8", shape: [1n, 3n], contents: { intContents: [1, 300, 3] } }],
          }),
        Code.InvalidArgument,
        /300 .* outside the INT8 range/,
      ],
      [
        "BYTES prefix past the end",
        () =>
          client.modelInfer({
            modelName: "text",
            inputs: [{ name: "text_in", datatype: "BYTES", shape: [1n, 1n] }],
            rawInputContents: [Uint8Array.from([255, 0, 0, 0, 65])],
          }),
        Code.InvalidArgument,
        /declares 255 bytes but only 1 remain/,
      ],
      [
        "BYTES count mismatch",
        () =>
          client.modelInfer({
            modelName: "text",
            inputs: [{ name: "text_in", datatype: "BYTES", shape: [2n, 1n] }],
            rawInputContents: [encodeRawBytes(["only one"])],
          }),
        Code.InvalidArgument,
        /holds 1 elements but its shape declares 2/,
      ],
    ];
    for (const [what, call, code, pattern] of cases) {
      await rejectsWith(call(), code, pattern).catch((error: unknown) => {
        throw new Error(`${what}: ${(error as Error).message}`);
      });
    }
  });

  test("ModelStreamInfer answers every request with its id, errors in error_message", async () => {
    async function* requests() {
      for (let i = 0; i < 20; i++) {
        yield {
          modelName: "mlp",
          id: `s${i}`,
          inputs: [{ name: "input", datatype: "FP32", shape: [1n, 64n] }],
          rawInputContents: [raw(seededFloats(64, 5000 + i))],
        };
      }
      yield {
        modelName: "mlp",
        id: "bad",
        inputs: [{ name: "input", datatype: "FP32", shape: [1n, 63n] }],
        rawInputContents: [new Uint8Array(252)],
      };
      yield { modelName: "ghost", id: "missing", inputs: [] };
    }
    const seen = new Map<string, string>();
    for await (const r of client.modelStreamInfer(requests())) {
      seen.set(r.inferResponse?.id ?? "?", r.errorMessage);
      if (!r.errorMessage) assert.equal(r.inferResponse?.rawOutputContents[0]?.byteLength, 40);
    }
    assert.equal(seen.size, 22);
    for (let i = 0; i < 20; i++) assert.equal(seen.get(`s${i}`), "");
    assert.match(seen.get("bad") ?? "", /^invalid_argument: .*dimension 1 .* must be 64/);
    assert.match(seen.get("missing") ?? "", /^not_found: /);
  });

  test("loads, unloads and failures are published as events", async () => {
    const names = new Names(ns);
    const nc = await natsConnect({ servers: natsUrl });
    try {
      const jsm = await jetstreamManager(nc);
      const last = async (what: string) => {
        const msg = await jsm.streams.getMessage(names.stream("EVENTS"), {
          last_by_subj: names.eventSubject("inference", what),
        });
        assert.ok(msg, `no ${what} event`);
        assert.equal(msg.header?.get("ce-type"), `nearhub.inference.${what}`);
        return msg.json<Record<string, string>>();
      };
      const loaded = await last("model.loaded");
      assert.ok(loaded["model"] && loaded["version"] === "1" && loaded["gateway"]);
      assert.deepEqual(
        { model: (await last("model.unloaded"))["model"], reason: (await last("model.unloaded"))["reason"] },
        { model: "text", reason: "request" },
      );
      const failed = await last("model.failed");
      assert.equal(failed["model"], "garbage");
      assert.equal(failed["code"], "failed_precondition");
      assert.match(failed["message"] ?? "", /ONNX Runtime cannot load/);
    } finally {
      await nc.close();
    }
  });

  test("per-model metrics in Triton's vocabulary on the metrics port", async () => {
    const text = await (await fetch(`http://127.0.0.1:${gateway.metricsPort}/metrics`)).text();
    assert.match(text, /nv_inference_request_success\{[^}]*model="add"[^}]*\} [1-9]/);
    assert.match(text, /nv_inference_exec_count\{[^}]*model="mlp"/);
    assert.match(text, /nv_inference_request_failure\{[^}]*reason="invalid_argument"/);
    assert.match(text, /nearhub_inference_batch_size_bucket\{[^}]*model="mlp"/);
    assert.match(text, /nearhub_inference_model_loads_total\{model="garbage",result="failed"[^}]*\} 1/);
  });
});
