import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, NearhubError } from "@nearhub/platform";
import * as ort from "onnxruntime-node";
import { OnnxBackend } from "./onnx-backend.js";
import { mlpModel, seededFloats } from "./onnx-model-builder.js";

const model = mlpModel(64, 256, 10);

describe("OnnxBackend (ONNX Runtime in worker threads)", () => {
  let backend: OnnxBackend;
  let session: ort.InferenceSession;

  before(async () => {
    ({ backend } = await OnnxBackend.load(model, { instances: 1, intraOpThreads: 1 }));
    session = await ort.InferenceSession.create(model);
  });

  after(async () => {
    await backend?.close();
    await session?.release();
  });

  const direct = async (input: Float32Array, rows: number) =>
    (await session.run({ input: new ort.Tensor("float32", input, [rows, 64]) }))["logits"]?.data as Float32Array;

  test("several runs in one hand-off each answer what onnxruntime-node answers in process; a bad one fails alone", async () => {
    // Inputs viewing parts of one larger buffer (as decoded request bytes do): the backend
    // copies them for the worker and leaves the caller's buffer usable.
    const shared = new Float32Array(64 * 3 + 8);
    shared.set(seededFloats(64, 1), 4);
    shared.set(seededFloats(128, 2), 4 + 64);
    const one = shared.subarray(4, 4 + 64);
    const two = shared.subarray(4 + 64, 4 + 192);
    const outcomes = await backend.runMany([
      { feeds: [{ name: "input", type: "float32", dims: [1, 64], data: one }], outputs: ["logits"] },
      { feeds: [{ name: "input", type: "float32", dims: [1, 65], data: new Float32Array(65) }], outputs: ["logits"] },
      { feeds: [{ name: "input", type: "float32", dims: [2, 64], data: two }], outputs: ["logits"] },
    ]);
    assert.equal(outcomes.length, 3);
    assert.equal(shared.buffer.byteLength, shared.byteLength, "the caller's buffer is not detached");
    const [a, bad, b] = outcomes;
    assert.ok(a && "outputs" in a && b && "outputs" in b);
    assert.deepEqual(a.outputs[0]?.dims, [1, 10]);
    assert.deepEqual(Array.from(a.outputs[0]?.data as Float32Array), Array.from(await direct(one.slice(), 1)));
    assert.deepEqual(b.outputs[0]?.dims, [2, 10]);
    assert.deepEqual(Array.from(b.outputs[0]?.data as Float32Array), Array.from(await direct(two.slice(), 2)));
    assert.ok(bad && "error" in bad);
    assert.ok(bad.error instanceof NearhubError);
    assert.equal(bad.error.code, Code.InvalidArgument);
    assert.match(bad.error.message, /the model rejected the inputs/);
  });

  test("a single run answers its outputs; a refused one is INVALID_ARGUMENT with ONNX Runtime's reason", async () => {
    const input = seededFloats(64, 9);
    const result = await backend.run(
      [{ name: "input", type: "float32", dims: [1, 64], data: input.slice() }],
      ["logits"],
    );
    assert.deepEqual(Array.from(result.outputs[0]?.data as Float32Array), Array.from(await direct(input, 1)));
    await assert.rejects(
      backend.run([{ name: "input", type: "float32", dims: [1, 64], data: input.slice() }], ["no_such_output"]),
      (e: NearhubError) => e.code === Code.InvalidArgument && /no_such_output/.test(e.message),
    );
  });
});
