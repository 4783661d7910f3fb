import { BinaryWriter } from "@bufbuild/protobuf/wire";

/**
 * A minimal encoder of ONNX ModelProto (onnx/onnx.proto3 field numbers), enough to build the
 * small graphs tests and benchmarks serve without downloading anything: typed inputs and
 * outputs with symbolic or fixed dimensions, nodes, and initializers.
 */

/** ONNX TensorProto.DataType values by KServe datatype name. */
export const ONNX_ELEM_TYPE = {
  FP32: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  BYTES: 8,
  BOOL: 9,
  FP16: 10,
  FP64: 11,
  UINT32: 12,
  UINT64: 13,
} as const;

/** A graph input or output: a dimension is a fixed size or a symbolic name such as `batch`. */
export interface OnnxValue {
  name: string;
  datatype: keyof typeof ONNX_ELEM_TYPE;
  shape: Array<number | string>;
}

/** A float32 constant baked into the graph. */
export interface OnnxInitializer {
  name: string;
  dims: number[];
  values: Float32Array;
}

/** One operator of the graph. */
export interface OnnxNode {
  opType: string;
  inputs: string[];
  outputs: string[];
}

/** The graph to encode. */
export interface OnnxGraph {
  name: string;
  inputs: OnnxValue[];
  outputs: OnnxValue[];
  nodes: OnnxNode[];
  initializers?: OnnxInitializer[];
  /** Default opset 13. */
  opset?: number;
}

function valueInfo(w: BinaryWriter, field: number, value: OnnxValue): void {
  w.tag(field, 2).fork();
  w.tag(1, 2).string(value.name);
  w.tag(2, 2).fork(); // TypeProto
  w.tag(1, 2).fork(); // TypeProto.Tensor
  w.tag(1, 0).int32(ONNX_ELEM_TYPE[value.datatype]);
  w.tag(2, 2).fork(); // TensorShapeProto
  for (const dim of value.shape) {
    w.tag(1, 2).fork();
    if (typeof dim === "number") w.tag(1, 0).int64(dim);
    else w.tag(2, 2).string(dim);
    w.join();
  }
  w.join().join().join().join();
}

/** Encodes an ONNX model (IR version 8) holding one graph. */
export function encodeOnnxModel(graph: OnnxGraph): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, 0).int64(8); // ir_version
  w.tag(2, 2).string("nearhub");
  w.tag(7, 2).fork(); // graph
  for (const node of graph.nodes) {
    w.tag(1, 2).fork();
    for (const input of node.inputs) w.tag(1, 2).string(input);
    for (const output of node.outputs) w.tag(2, 2).string(output);
    w.tag(4, 2).string(node.opType);
    w.join();
  }
  w.tag(2, 2).string(graph.name);
  for (const init of graph.initializers ?? []) {
    w.tag(5, 2).fork();
    for (const d of init.dims) w.tag(1, 0).int64(d);
    w.tag(2, 0).int32(ONNX_ELEM_TYPE.FP32);
    w.tag(8, 2).string(init.name);
    w.tag(9, 2).bytes(new Uint8Array(init.values.buffer, init.values.byteOffset, init.values.byteLength));
    w.join();
  }
  for (const input of graph.inputs) valueInfo(w, 11, input);
  for (const output of graph.outputs) valueInfo(w, 12, output);
  w.join();
  w.tag(8, 2).fork(); // opset_import
  w.tag(1, 2).string("");
  w.tag(2, 0).int64(graph.opset ?? 13);
  w.join();
  return w.finish();
}

/** A deterministic pseudo-random float32 array (for weights that tests can reproduce). */
export function seededFloats(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = (s / 0xffffffff - 0.5) * 0.5;
  }
  return out;
}

/** `z = x + y` over `[batch, width]` tensors of one datatype. */
export function addModel(datatype: OnnxValue["datatype"] = "FP32", width = 4): Uint8Array {
  return encodeOnnxModel({
    name: "add",
    inputs: [
      { name: "x", datatype, shape: ["batch", width] },
      { name: "y", datatype, shape: ["batch", width] },
    ],
    outputs: [{ name: "z", datatype, shape: ["batch", width] }],
    nodes: [{ opType: "Add", inputs: ["x", "y"], outputs: ["z"] }],
  });
}

/** `y = relu(x·W1 + b1)·W2 + b2`, FP32, `[batch, input] → [batch, output]`, seeded weights. */
export function mlpModel(input = 64, hidden = 256, output = 10, seed = 7): Uint8Array {
  return encodeOnnxModel({
    name: "mlp",
    inputs: [{ name: "input", datatype: "FP32", shape: ["batch", input] }],
    outputs: [{ name: "logits", datatype: "FP32", shape: ["batch", output] }],
    initializers: [
      { name: "w1", dims: [input, hidden], values: seededFloats(input * hidden, seed) },
      { name: "b1", dims: [hidden], values: seededFloats(hidden, seed + 1) },
      { name: "w2", dims: [hidden, output], values: seededFloats(hidden * output, seed + 2) },
      { name: "b2", dims: [output], values: seededFloats(output, seed + 3) },
    ],
    nodes: [
      { opType: "MatMul", inputs: ["input", "w1"], outputs: ["h0"] },
      { opType: "Add", inputs: ["h0", "b1"], outputs: ["h1"] },
      { opType: "Relu", inputs: ["h1"], outputs: ["h2"] },
      { opType: "MatMul", inputs: ["h2", "w2"], outputs: ["h3"] },
      { opType: "Add", inputs: ["h3", "b2"], outputs: ["logits"] },
    ],
  });
}

/** A string identity: `text_out = text_in`, `[batch, 1]` strings. */
export function stringIdentityModel(): Uint8Array {
  return encodeOnnxModel({
    name: "string_identity",
    inputs: [{ name: "text_in", datatype: "BYTES", shape: ["batch", 1] }],
    outputs: [{ name: "text_out", datatype: "BYTES", shape: ["batch", 1] }],
    nodes: [{ opType: "Identity", inputs: ["text_in"], outputs: ["text_out"] }],
  });
}

/** `output = input` over `[batch, width]` tensors of any datatype. */
export function identityModel(datatype: OnnxValue["datatype"], width = 3): Uint8Array {
  return encodeOnnxModel({
    name: "identity",
    inputs: [{ name: "input", datatype, shape: ["batch", width] }],
    outputs: [{ name: "output", datatype, shape: ["batch", width] }],
    nodes: [{ opType: "Identity", inputs: ["input"], outputs: ["output"] }],
  });
}
