import { create } from "@bufbuild/protobuf";
import { Code, NearhubError } from "@nearhub/platform";
import {
  InferTensorContentsSchema,
  ModelInferResponse_InferOutputTensorSchema,
  type InferTensorContents,
  type ModelInferRequest,
  type ModelInferResponse_InferOutputTensor,
} from "@nearhub/proto/inference";
import type { TensorData, WorkerTensor } from "./onnx-protocol.js";

/** The KServe v2 tensor datatypes nearhub serves. */
export const DATATYPES = [
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
  "FP32",
  "FP64",
  "BYTES",
] as const;

/** A KServe v2 datatype name. */
export type Datatype = (typeof DATATYPES)[number];

type NumericArray = Exclude<TensorData, string[]>;

interface TypeInfo {
  ort: string;
  /** Bytes per element; 0 for BYTES. */
  size: number;
  alloc: (count: number) => NumericArray;
  /** The InferTensorContents field carrying it, absent for FP16 (raw only). */
  field?: keyof Omit<InferTensorContents, "$typeName" | "$unknown">;
  /** Inclusive range of values the contents field may carry, when narrower than the field. */
  range?: [number, number];
}

const TYPES: Record<Datatype, TypeInfo> = {
  BOOL: { ort: "bool", size: 1, alloc: (n) => new Uint8Array(n), field: "boolContents" },
  UINT8: { ort: "uint8", size: 1, alloc: (n) => new Uint8Array(n), field: "uintContents", range: [0, 255] },
  UINT16: { ort: "uint16", size: 2, alloc: (n) => new Uint16Array(n), field: "uintContents", range: [0, 65535] },
  UINT32: { ort: "uint32", size: 4, alloc: (n) => new Uint32Array(n), field: "uintContents" },
  UINT64: { ort: "uint64", size: 8, alloc: (n) => new BigUint64Array(n), field: "uint64Contents" },
  INT8: { ort: "int8", size: 1, alloc: (n) => new Int8Array(n), field: "intContents", range: [-128, 127] },
  INT16: { ort: "int16", size: 2, alloc: (n) => new Int16Array(n), field: "intContents", range: [-32768, 32767] },
  INT32: { ort: "int32", size: 4, alloc: (n) => new Int32Array(n), field: "intContents" },
  INT64: { ort: "int64", size: 8, alloc: (n) => new BigInt64Array(n), field: "int64Contents" },
  FP16: { ort: "float16", size: 2, alloc: (n) => new Uint16Array(n) },
  FP32: { ort: "float32", size: 4, alloc: (n) => new Float32Array(n), field: "fp32Contents" },
  FP64: { ort: "float64", size: 8, alloc: (n) => new Float64Array(n), field: "fp64Contents" },
  BYTES: { ort: "string", size: 0, alloc: () => new Uint8Array(0), field: "bytesContents" },
};

type ViewConstructor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => NumericArray;

/** Each datatype's typed array, to view raw bytes in place. */
const VIEWS = Object.fromEntries(
  Object.entries(TYPES).map(([datatype, info]) => {
    const Ctor = info.alloc(0).constructor as ViewConstructor;
    return [datatype, (buffer: ArrayBufferLike, offset: number, length: number) => new Ctor(buffer, offset, length)];
  }),
) as Record<Datatype, (buffer: ArrayBufferLike, offset: number, length: number) => NumericArray>;

/** The ONNX Runtime tensor type of a datatype. */
export function ortType(datatype: Datatype): string {
  return TYPES[datatype].ort;
}

/** The most elements one tensor may have (a guard against hostile shapes). */
export const MAX_ELEMENTS = 1 << 28;
const MAX_ELEMENTS_BIG = BigInt(MAX_ELEMENTS);

/** The declared shape of one model tensor, as the codec needs it. */
export interface TensorSpec {
  name: string;
  datatype: Datatype;
  /** Without the batch dimension when batched; -1 is variable. */
  dims: number[];
}

/** Decoded inputs of one request, in the model's input order. */
export interface DecodedRequest {
  tensors: WorkerTensor[];
  /** Rows along the batch dimension (1 when the model is not batched). */
  batch: number;
  /** Inputs' non-batch shapes: requests with equal keys can be batched together. */
  shapeKey: string;
  /** True when the client sent raw_input_contents (the response answers raw as well). */
  raw: boolean;
}

function invalid(message: string): NearhubError {
  return new NearhubError(Code.InvalidArgument, message);
}

const utf8 = new TextDecoder("utf-8", { fatal: false });
const utf8Encoder = new TextEncoder();

/** Splits BYTES raw content: each element is a 4-byte little-endian length and its bytes. */
function decodeRawBytes(buf: Uint8Array, count: number, name: string): string[] {
  const out: string[] = [];
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let offset = 0;
  while (offset < buf.byteLength) {
    if (offset + 4 > buf.byteLength) {
      throw invalid(`input ${name}: BYTES raw content ends inside a 4-byte length prefix at byte ${offset}`);
    }
    const len = view.getUint32(offset, true);
    offset += 4;
    if (offset + len > buf.byteLength) {
      throw invalid(
        `input ${name}: BYTES element ${out.length} declares ${len} bytes but only ${buf.byteLength - offset} remain`,
      );
    }
    if (out.length >= count) {
      throw invalid(`input ${name}: BYTES raw content holds more than the ${count} elements its shape declares`);
    }
    out.push(utf8.decode(buf.subarray(offset, offset + len)));
    offset += len;
  }
  if (out.length !== count) {
    throw invalid(`input ${name}: BYTES raw content holds ${out.length} elements but its shape declares ${count}`);
  }
  return out;
}

/** Encodes strings as BYTES raw content (4-byte little-endian length prefixes). */
export function encodeRawBytes(values: readonly string[]): Uint8Array {
  const parts = values.map((v) => utf8Encoder.encode(v));
  const out = new Uint8Array(parts.reduce((n, p) => n + 4 + p.byteLength, 0));
  const view = new DataView(out.buffer);
  let offset = 0;
  for (const p of parts) {
    view.setUint32(offset, p.byteLength, true);
    out.set(p, offset + 4);
    offset += 4 + p.byteLength;
  }
  return out;
}

function fromContents(contents: InferTensorContents, spec: TensorSpec, count: number): TensorData {
  const info = TYPES[spec.datatype];
  const { name, datatype } = spec;
  if (!info.field) {
    throw invalid(`input ${name}: ${datatype} has no typed contents field; send it in raw_input_contents`);
  }
  const values = contents[info.field] as unknown[];
  if (values.length !== count) {
    throw invalid(
      `input ${name}: contents.${info.field} has ${values.length} values but shape needs ${count} (send exactly one value per element, ${datatype} goes in ${info.field})`,
    );
  }
  if (datatype === "BYTES") return (values as Uint8Array[]).map((b) => utf8.decode(b));
  if (datatype === "BOOL") return Uint8Array.from(values as boolean[], (b) => (b ? 1 : 0));
  const out = info.alloc(count);
  if (out instanceof BigInt64Array || out instanceof BigUint64Array) {
    const src = values as bigint[];
    for (let i = 0; i < count; i++) out[i] = src[i] as bigint;
    if (datatype === "UINT64" && src.some((v) => v < 0n)) throw invalid(`input ${name}: UINT64 values must be >= 0`);
    return out;
  }
  const src = values as number[];
  if (info.range) {
    const [lo, hi] = info.range;
    const bad = src.findIndex((v) => v < lo || v > hi);
    if (bad >= 0)
      throw invalid(`input ${name}: value ${src[bad] ?? 0} at ${bad} is outside the ${datatype} range ${lo}..${hi}`);
  }
  out.set(src);
  return out;
}

function fromRaw(raw: Uint8Array, spec: TensorSpec, count: number): TensorData {
  const info = TYPES[spec.datatype];
  if (spec.datatype === "BYTES") return decodeRawBytes(raw, count, spec.name);
  const expected = count * info.size;
  if (raw.byteLength !== expected) {
    throw invalid(
      `input ${spec.name}: raw content is ${raw.byteLength} bytes but shape and ${spec.datatype} need ${expected} (${count} elements × ${info.size} bytes, little-endian, row-major)`,
    );
  }
  // A view when the bytes are aligned for the type (no copy: a batch concatenates them anyway,
  // and the backend copies what it must hand over whole); otherwise an aligned copy.
  if (raw.byteOffset % info.size === 0) return VIEWS[spec.datatype](raw.buffer, raw.byteOffset, count);
  const out = info.alloc(count);
  new Uint8Array(out.buffer).set(raw);
  return out;
}

/** A shape for messages: its first dimensions. */
function shapeText(shape: readonly bigint[]): string {
  return `[${shape.slice(0, 8).join(", ")}${shape.length > 8 ? ", …" : ""}]`;
}

/**
 * Checks a request against the model's inputs and decodes every tensor, from typed contents
 * or raw_input_contents, into flat arrays ONNX Runtime takes. Any mismatch is
 * INVALID_ARGUMENT with what to send instead.
 */
export function decodeInputs(
  request: ModelInferRequest,
  specs: readonly TensorSpec[],
  maxBatch: number,
): DecodedRequest {
  const raw = request.rawInputContents.length > 0;
  if (raw && request.rawInputContents.length !== request.inputs.length) {
    throw invalid(
      `raw_input_contents has ${request.rawInputContents.length} entries but there are ${request.inputs.length} inputs; send one per input, in the order of inputs`,
    );
  }
  if (request.inputs.length !== specs.length) {
    throw invalid(
      `the model takes ${specs.length} inputs (${specs.map((s) => s.name).join(", ")}) but the request has ${request.inputs.length}`,
    );
  }
  // The common case, one input, needs no map.
  const byName =
    request.inputs.length === 1
      ? undefined
      : new Map(request.inputs.map((input, index) => [input.name, { input, index }]));
  if (byName && byName.size !== request.inputs.length) throw invalid("an input name appears more than once");
  let batch = -1;
  const tensors: WorkerTensor[] = [];
  const keys: string[] = [];
  for (const spec of specs) {
    const only = request.inputs[0];
    const found = byName
      ? byName.get(spec.name)
      : only && only.name === spec.name
        ? { input: only, index: 0 }
        : undefined;
    if (!found) {
      const unknown = request.inputs.find((i) => !specs.some((s) => s.name === i.name));
      throw invalid(
        `input ${spec.name} is missing${unknown ? ` (got unknown input ${JSON.stringify(unknown.name.slice(0, 64))})` : ""}; the model takes ${specs.map((s) => s.name).join(", ")}`,
      );
    }
    const { input, index } = found;
    if (input.datatype !== spec.datatype) {
      throw invalid(
        `input ${spec.name} has datatype ${JSON.stringify(input.datatype.slice(0, 16))}; the model takes ${spec.datatype}`,
      );
    }
    const expectedRank = spec.dims.length + (maxBatch > 0 ? 1 : 0);
    if (input.shape.length !== expectedRank) {
      throw invalid(
        `input ${spec.name} has shape ${shapeText(input.shape)} (rank ${input.shape.length}); the model takes rank ${expectedRank}: ${maxBatch > 0 ? "[batch, " : "["}${spec.dims.join(", ")}]`,
      );
    }
    let count = 1;
    const dims: number[] = [];
    for (let d = 0; d < input.shape.length; d++) {
      const value = input.shape[d] as bigint;
      if (value < 0n || value > MAX_ELEMENTS_BIG) {
        throw invalid(
          `input ${spec.name}: dimension ${d} of shape ${shapeText(input.shape)} must be between 0 and ${MAX_ELEMENTS}`,
        );
      }
      const n = Number(value);
      const declared = maxBatch > 0 ? (d === 0 ? -1 : spec.dims[d - 1]) : spec.dims[d];
      if (declared !== undefined && declared >= 0 && declared !== n) {
        throw invalid(`input ${spec.name}: dimension ${d} of shape ${shapeText(input.shape)} must be ${declared}`);
      }
      count *= n;
      if (count > MAX_ELEMENTS) {
        throw invalid(
          `input ${spec.name}: shape ${shapeText(input.shape)} has more than ${MAX_ELEMENTS} elements; send smaller requests`,
        );
      }
      dims.push(n);
    }
    if (maxBatch > 0) {
      const rows = dims[0] as number;
      if (rows < 1 || rows > maxBatch) {
        throw invalid(
          `input ${spec.name}: batch size ${rows} must be between 1 and the model's max_batch_size ${maxBatch}`,
        );
      }
      if (batch >= 0 && rows !== batch) {
        throw invalid(
          `input ${spec.name} has batch size ${rows} but another input has ${batch}; all inputs share the batch dimension`,
        );
      }
      batch = rows;
      keys.push(dims.slice(1).join("x"));
    } else {
      keys.push(dims.join("x"));
    }
    let data: TensorData;
    if (raw) {
      if (input.contents && hasContents(input.contents)) {
        throw invalid(`input ${spec.name} has both contents and raw_input_contents; send one or the other`);
      }
      data = fromRaw(request.rawInputContents[index] as Uint8Array, spec, count);
    } else {
      if (!input.contents)
        throw invalid(`input ${spec.name} has no contents and the request has no raw_input_contents`);
      data = fromContents(input.contents, spec, count);
    }
    tensors.push({ name: spec.name, type: TYPES[spec.datatype].ort, dims, data });
  }
  return { tensors, batch: maxBatch > 0 ? batch : 1, shapeKey: keys.join(";"), raw };
}

function hasContents(c: InferTensorContents): boolean {
  return (
    c.boolContents.length +
      c.intContents.length +
      c.int64Contents.length +
      c.uintContents.length +
      c.uint64Contents.length +
      c.fp32Contents.length +
      c.fp64Contents.length +
      c.bytesContents.length >
    0
  );
}

/** One output tensor of the response, as raw bytes or typed contents. */
export function encodeOutput(
  tensor: WorkerTensor,
  datatype: Datatype,
  asRaw: boolean,
): { tensor: ModelInferResponse_InferOutputTensor; raw?: Uint8Array } {
  const shape = tensor.dims.map((d) => BigInt(d));
  const info = TYPES[datatype];
  if (asRaw || !info.field) {
    const raw = Array.isArray(tensor.data)
      ? encodeRawBytes(tensor.data)
      : new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
    return { tensor: create(ModelInferResponse_InferOutputTensorSchema, { name: tensor.name, datatype, shape }), raw };
  }
  const contents = create(InferTensorContentsSchema);
  const data = tensor.data;
  if (Array.isArray(data)) contents.bytesContents = data.map((s) => utf8Encoder.encode(s));
  else if (datatype === "BOOL") contents.boolContents = Array.from(data as Uint8Array, (v) => v !== 0);
  else if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
    (contents[info.field] as bigint[]) = Array.from(data);
  } else (contents[info.field] as number[]) = Array.from(data);
  return {
    tensor: create(ModelInferResponse_InferOutputTensorSchema, { name: tensor.name, datatype, shape, contents }),
  };
}

/** Concatenates same-typed tensors along dimension 0. */
export function concatRows(parts: readonly WorkerTensor[]): WorkerTensor {
  const first = parts[0] as WorkerTensor;
  if (parts.length === 1) return first;
  const rows = parts.reduce((n, p) => n + (p.dims[0] as number), 0);
  const dims = [rows, ...first.dims.slice(1)];
  if (Array.isArray(first.data)) {
    return { ...first, dims, data: parts.flatMap((p) => p.data as string[]) };
  }
  const total = parts.reduce((n, p) => n + p.data.length, 0);
  const Ctor = first.data.constructor as new (n: number) => NumericArray;
  const out = new Ctor(total);
  let offset = 0;
  for (const p of parts) {
    (out as Float32Array).set(p.data as Float32Array, offset);
    offset += p.data.length;
  }
  return { ...first, dims, data: out };
}

/** Rows `[start, start + count)` of a tensor along dimension 0 (a view, not a copy). */
export function sliceRows(tensor: WorkerTensor, start: number, count: number): WorkerTensor {
  const rows = tensor.dims[0] as number;
  if (start === 0 && count === rows) return tensor;
  const per = rows === 0 ? 0 : tensor.data.length / rows;
  const dims = [count, ...tensor.dims.slice(1)];
  const data = Array.isArray(tensor.data)
    ? tensor.data.slice(start * per, (start + count) * per)
    : (tensor.data as Float32Array).subarray(start * per, (start + count) * per);
  return { ...tensor, dims, data };
}
