/** Messages between the gateway and its ONNX Runtime worker threads. */

/** A tensor crossing the thread boundary: ORT type name, dims and flat data. */
export interface WorkerTensor {
  name: string;
  /** onnxruntime type: float32, int64, string, bool, float16… */
  type: string;
  dims: number[];
  data: TensorData;
}

/** Flat tensor data: a typed array, or strings for BYTES. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array
  | string[];

/** Gateway → worker. */
export type WorkerRequest =
  { type: "run"; id: number; runs: Array<{ feeds: WorkerTensor[]; outputs: string[] }> } | { type: "close" };

/** One run's answer: its outputs, or why the model refused it. */
export type RunResult = { outputs: WorkerTensor[]; computeMs: number } | { error: string };

/** One input or output of the loaded graph; -1 marks a symbolic dimension. */
export interface GraphValue {
  name: string;
  type: string;
  shape: number[];
}

/** Worker → gateway. */
export type WorkerResponse =
  | { type: "ready"; inputs: GraphValue[]; outputs: GraphValue[] }
  | { type: "load-error"; message: string }
  | { type: "results"; id: number; results: RunResult[] };
