/**
 * The body of one ONNX Runtime instance: a worker thread holding one InferenceSession, so the
 * gateway's event loop never blocks on compute. It is plain CommonJS run with `eval`, so a
 * worker starts in milliseconds in development (no TypeScript loader to boot per thread) and
 * in the build alike; `onnxruntime-node` is required by the absolute path the parent resolved.
 * Messages follow onnx-protocol.ts: in `run` (one or more runs) and `close`; out `ready`,
 * `load-error` and `results` (one per `run` message).
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

// One run; its output buffers join the transfer list. Errors answer the run, not the whole message.
async function runOne(feeds, outputs, transfer) {
  if (!session) return { error: "the model session is closed" };
  try {
    const inputs = {};
    for (const f of feeds) inputs[f.name] = new ort.Tensor(f.type, f.data, f.dims);
    const started = performance.now();
    const result = await session.run(inputs, outputs);
    const computeMs = performance.now() - started;
    const out = [];
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
    return { outputs: out, computeMs };
  } catch (error) {
    return { error: String(error && error.message ? error.message : error) };
  }
}

// Every run of a message in turn, answered together: one wake-up of the gateway per message.
async function run(id, runs) {
  const results = [];
  const transfer = [];
  for (const r of runs) results.push(await runOne(r.feeds, r.outputs, transfer));
  parentPort.postMessage({ type: "results", id, results }, transfer);
}

parentPort.on("message", (message) => {
  if (message.type === "close") {
    Promise.resolve(session && session.release()).finally(() => {
      session = undefined;
      parentPort.close();
    });
    return;
  }
  void run(message.id, message.runs);
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
