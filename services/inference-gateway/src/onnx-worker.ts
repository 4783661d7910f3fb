/**
 * The body of one ONNX Runtime instance: a worker thread holding one InferenceSession, so the
 * gateway's event loop never blocks on compute. It is plain CommonJS run with `eval`, so a
 * worker starts in milliseconds in development (no TypeScript loader to boot per thread) and
 * in the build alike; `onnxruntime-node` is required by the absolute path the parent resolved.
 * Messages follow onnx-protocol.ts: in `run` and `close`; out `ready`, `load-error`, `result`,
 * `error`.
 */
export const WORKER_SOURCE = String.raw`
"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const ort = require(workerData.ortPath);
let session;

function signature(meta) {
  return meta.map((m) =>
    m.isTensor
      ? { name: m.name, type: m.type, shape: m.shape.map((d) => (typeof d === "number" ? d : -1)) }
      : { name: m.name, type: "unsupported", shape: [] },
  );
}

async function run(id, feeds, outputs) {
  if (!session) {
    parentPort.postMessage({ type: "error", id, message: "the model session is closed" });
    return;
  }
  try {
    const inputs = {};
    for (const f of feeds) inputs[f.name] = new ort.Tensor(f.type, f.data, f.dims);
    const started = performance.now();
    const result = await session.run(inputs, outputs);
    const computeMs = performance.now() - started;
    const out = [];
    const transfer = [];
    for (const name of outputs) {
      const t = result[name];
      if (!t) throw new Error("the model produced no output " + name);
      let data = t.data;
      if (!Array.isArray(data)) {
        // A copy the thread owns, so it can be transferred instead of cloned.
        if (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) data = data.slice();
        transfer.push(data.buffer);
      }
      out.push({ name, type: t.type, dims: Array.from(t.dims), data });
    }
    parentPort.postMessage({ type: "result", id, outputs: out, computeMs }, transfer);
  } catch (error) {
    parentPort.postMessage({ type: "error", id, message: String(error && error.message ? error.message : error) });
  }
}

parentPort.on("message", (message) => {
  if (message.type === "close") {
    Promise.resolve(session && session.release()).finally(() => {
      session = undefined;
      parentPort.close();
    });
    return;
  }
  void run(message.id, message.feeds, message.outputs);
});

ort.InferenceSession.create(workerData.model, {
  intraOpNumThreads: workerData.intraOpThreads,
  interOpNumThreads: 1,
  graphOptimizationLevel: "all",
}).then(
  (s) => {
    session = s;
    parentPort.postMessage({ type: "ready", inputs: signature(s.inputMetadata), outputs: signature(s.outputMetadata) });
  },
  (error) => parentPort.postMessage({ type: "load-error", message: String(error && error.message ? error.message : error) }),
);
`;
