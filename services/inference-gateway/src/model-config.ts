import { Code, NearhubError, formatZodIssues } from "@nearhub/platform";
import { z } from "zod";
import { DATATYPES, type Datatype } from "./tensor-codec.js";
import type { GraphSignature } from "./onnx-backend.js";

const tensorSchema = z.object({
  name: z.string().min(1).max(256),
  datatype: z.enum(DATATYPES as unknown as [Datatype, ...Datatype[]]),
  /** Dimensions without the batch dimension when max_batch_size > 0; -1 is variable. */
  dims: z
    .array(
      z
        .number()
        .int()
        .min(-1)
        .max(1 << 30),
    )
    .max(16),
});

/**
 * `nearhub-model.json`: how to serve one model. Inputs and outputs may be left out; they are
 * then read from the ONNX graph when the model loads.
 */
export const modelConfigSchema = z.object({
  backend: z.literal("onnxruntime").default("onnxruntime"),
  /** The model file inside the model folder or registry repo. */
  model_file: z.string().min(1).max(256).default("model.onnx"),
  /** > 0: the first dimension of every input and output is the batch dimension. */
  max_batch_size: z
    .number()
    .int()
    .min(0)
    .max(1 << 16)
    .default(0),
  inputs: z.array(tensorSchema).max(64).optional(),
  outputs: z.array(tensorSchema).max(64).optional(),
  instances: z.number().int().min(1).max(16).default(1),
  /** ONNX Runtime intra-op threads per instance. */
  intra_op_threads: z.number().int().min(1).max(64).default(1),
  dynamic_batching: z
    .object({
      preferred_batch_size: z.array(z.number().int().min(1)).max(16).default([]),
      max_queue_delay_microseconds: z.number().int().min(0).max(10_000_000).default(0),
    })
    .optional(),
  /** Requests waiting for an instance before new ones get RESOURCE_EXHAUSTED. */
  max_queue_size: z.number().int().min(1).max(1_000_000).default(1024),
});

/** A tensor's configuration. */
export type TensorConfig = z.infer<typeof tensorSchema>;
/** A parsed `nearhub-model.json`. */
export type ModelConfig = z.infer<typeof modelConfigSchema>;
/** A configuration whose inputs and outputs are known. */
export type ResolvedModelConfig = ModelConfig & { inputs: TensorConfig[]; outputs: TensorConfig[] };

/** Parses `nearhub-model.json` text, or FAILED_PRECONDITION listing what is wrong. */
export function parseModelConfig(text: string, where: string): ModelConfig {
  let raw: unknown;
  try {
    raw = text.trim() ? JSON.parse(text) : {};
  } catch (error) {
    throw new NearhubError(Code.FailedPrecondition, `${where} is not valid JSON: ${(error as Error).message}`);
  }
  const parsed = modelConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new NearhubError(Code.FailedPrecondition, `${where} is invalid: ${formatZodIssues(parsed.error)}`);
  }
  const config = parsed.data;
  if (config.dynamic_batching && config.max_batch_size === 0) {
    throw new NearhubError(Code.FailedPrecondition, `${where}: dynamic_batching needs max_batch_size > 0`);
  }
  for (const p of config.dynamic_batching?.preferred_batch_size ?? []) {
    if (p > config.max_batch_size) {
      throw new NearhubError(
        Code.FailedPrecondition,
        `${where}: preferred batch size ${p} is above max_batch_size ${config.max_batch_size}`,
      );
    }
  }
  return config;
}

const ORT_TO_DATATYPE: Record<string, Datatype> = {
  float32: "FP32",
  float64: "FP64",
  float16: "FP16",
  int8: "INT8",
  int16: "INT16",
  int32: "INT32",
  int64: "INT64",
  uint8: "UINT8",
  uint16: "UINT16",
  uint32: "UINT32",
  uint64: "UINT64",
  bool: "BOOL",
  string: "BYTES",
};

/** Fills inputs and outputs the configuration left out from the graph, and checks the rest against it. */
export function resolveModelConfig(config: ModelConfig, graph: GraphSignature, where: string): ResolvedModelConfig {
  const fromGraph = (values: GraphSignature["inputs"], kind: string): TensorConfig[] =>
    values.map((v) => {
      const datatype = ORT_TO_DATATYPE[v.type];
      if (!datatype) {
        throw new NearhubError(Code.FailedPrecondition, `${where}: ${kind} ${v.name} has unsupported type ${v.type}`);
      }
      const dims = config.max_batch_size > 0 ? v.shape.slice(1) : v.shape;
      return { name: v.name, datatype, dims };
    });
  const check = (declared: TensorConfig[] | undefined, actual: TensorConfig[], kind: string): TensorConfig[] => {
    if (!declared) return actual;
    for (const d of declared) {
      const a = actual.find((x) => x.name === d.name);
      if (!a) {
        throw new NearhubError(
          Code.FailedPrecondition,
          `${where}: ${kind} ${d.name} is not in the model (it has ${actual.map((x) => x.name).join(", ")})`,
        );
      }
      if (a.datatype !== d.datatype) {
        throw new NearhubError(
          Code.FailedPrecondition,
          `${where}: ${kind} ${d.name} is ${d.datatype} in the configuration but ${a.datatype} in the model`,
        );
      }
    }
    return declared;
  };
  return {
    ...config,
    inputs: check(config.inputs, fromGraph(graph.inputs, "input"), "input"),
    outputs: check(config.outputs, fromGraph(graph.outputs, "output"), "output"),
  };
}
