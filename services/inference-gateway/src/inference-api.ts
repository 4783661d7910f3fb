import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  NearhubError,
  ServingStatus,
  codeName,
  runAs,
  type CallContext,
  type HealthReporter,
  type ServiceImpl,
} from "@nearhub/platform";
import type {
  GRPCInferenceService,
  ModelInferRequest,
  ModelInferResponse,
  ModelInferResponse_InferOutputTensor,
  ModelInferResponseSchema,
} from "@nearhub/proto/inference";
import { INVALID_SPAN_CONTEXT, SpanStatusCode, trace, type Span } from "@opentelemetry/api";
import type { LoadedModel, ModelManager } from "./model-manager.js";
import type { RemoteBackends } from "./remote-backends.js";
import { ModelStats, recordRequest, type InferenceMetrics, type RequestCounters } from "./model-statistics.js";
import { decodeInputs, encodeOutput, type Datatype } from "./tensor-codec.js";

/** The server name and version ServerMetadata reports. */
export const SERVER_NAME = "nearhub";
export const SERVER_VERSION = "0.1.0";

const tracer = trace.getTracer("nearhub-inference");
/** Stands in for the span of an untraced call: records nothing. */
const UNTRACED = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

type InferResponse = MessageInitShape<typeof ModelInferResponseSchema>;

/** What an inference needs of its call: a stream's requests share the stream's. */
type InferCall = Pick<CallContext, "deadline" | "principal" | "aborted">;

/** What every request to one loaded model shares, computed once per load. */
interface HotPath {
  labels: { model: string; version: string };
  counters: RequestCounters;
  spanName: string;
  spanOptions: { attributes: Record<string, string> };
  /** The outputs answered when a request names none. */
  outputNames: string[];
  datatypes: Map<string, Datatype>;
  hasFp16: boolean;
  /** Descriptions of raw outputs by name and 2-D shape, shared by the responses (read-only). */
  rawOutputs: Map<string, ModelInferResponse_InferOutputTensor>;
}

const hotPaths = new WeakMap<LoadedModel, HotPath>();

function hotPath(model: LoadedModel, metrics: InferenceMetrics): HotPath {
  let hot = hotPaths.get(model);
  if (!hot) {
    const { outputs } = model.config;
    hot = {
      labels: { model: model.name, version: model.version },
      counters: metrics.counters(model.name, model.version),
      spanName: `infer ${model.name}`,
      spanOptions: { attributes: { "inference.model": model.name, "inference.version": model.version } },
      outputNames: outputs.map((o) => o.name),
      datatypes: new Map(outputs.map((o) => [o.name, o.datatype])),
      hasFp16: outputs.some((o) => o.datatype === "FP16"),
      rawOutputs: new Map(),
    };
    hotPaths.set(model, hot);
  }
  return hot;
}

/** The most requests one ModelStreamInfer call keeps in flight before it stops reading. */
const STREAM_WINDOW = 512;

/**
 * inference.GRPCInferenceService (KServe v2 / Triton wire protocol) over the model manager:
 * model-addressed calls resolve the model in the source and load it on first use.
 */
export function inferenceApi(
  models: ModelManager,
  health: HealthReporter,
  metrics: InferenceMetrics,
  remotes?: RemoteBackends,
  /** Counts an inference for the audit trail (aggregated per caller and model). */
  recordInference: (ctx: CallContext, resource: string) => void = () => undefined,
): ServiceImpl<typeof GRPCInferenceService> {
  /** True when the model is not held here but a remote backend serves it (local models win). */
  const isRemote = async (name: string, version: string): Promise<boolean> =>
    remotes !== undefined && remotes.has(name, version) && !(await models.list()).some((m) => m.name === name);

  const requireName = (name: string, field: string): void => {
    if (!name) throw new NearhubError(Code.InvalidArgument, `${field} is required: name the model to use`);
  };

  /** One inference on a held local model. */
  async function inferLocal(
    model: LoadedModel,
    hot: HotPath,
    request: ModelInferRequest,
    ctx: InferCall,
    started: number,
    span: Span,
  ): Promise<InferResponse> {
    const { counters } = hot;
    counters.pending++;
    let rows = 0;
    let queueMs: number | undefined;
    try {
      const { config } = model;
      const decoded = decodeInputs(request, config.inputs, config.max_batch_size);
      rows = decoded.batch;
      let wanted = hot.outputNames;
      if (request.outputs.length > 0) {
        wanted = request.outputs.map((o) => o.name);
        for (const name of wanted) {
          if (!hot.datatypes.has(name)) {
            throw new NearhubError(
              Code.InvalidArgument,
              `requested output ${JSON.stringify(name.slice(0, 64))} is not an output of model ${model.name}; it has ${hot.outputNames.join(", ")}`,
            );
          }
        }
      }
      // The call is polled when the batch forms rather than listened to: an AbortSignal per
      // request costs more than the rest of the queueing.
      const { outputs, timing } = await model.scheduler.submit({
        tensors: decoded.tensors,
        batch: decoded.batch,
        shapeKey: decoded.shapeKey,
        deadline: ctx.deadline?.getTime(),
        call: ctx,
      });
      queueMs = timing.queueMs;
      if (span.isRecording()) {
        span.setAttributes({
          "inference.batch_rows": rows,
          "inference.executed_batch_size": timing.batchSize,
          "inference.queue_us": Math.round(timing.queueMs * 1000),
          "inference.compute_us": Math.round(timing.computeMs * 1000),
        });
      }
      const asRaw =
        decoded.raw ||
        (hot.hasFp16 && wanted.some((n) => hot.datatypes.get(n) === "FP16")) ||
        (request.outputs.length > 0 &&
          request.outputs.some((o) => o.parameters["binary_data"]?.parameterChoice.value === true));
      // The message itself, every field set (the type checks it), not an initializer: the
      // server would otherwise copy it into a new message field by field on every call.
      const response: ModelInferResponse = {
        $typeName: "inference.ModelInferResponse",
        modelName: model.name,
        modelVersion: model.version,
        id: request.id,
        parameters: {},
        outputs: [],
        rawOutputContents: [],
      };
      for (const name of wanted) {
        const tensor =
          outputs.length === 1 && outputs[0]?.name === name ? outputs[0] : outputs.find((o) => o.name === name);
        if (!tensor) throw new NearhubError(Code.Internal, `model ${model.name} did not produce output ${name}`);
        if (asRaw && !Array.isArray(tensor.data)) {
          // Raw outputs: the tensor's description (name, datatype, shape) is the same message for
          // every response of that shape, so it is made once; the bytes are a view of the result.
          const key =
            tensor.dims.length === 2 ? `${name}|${tensor.dims[0] as number}|${tensor.dims[1] as number}` : undefined;
          let described = key === undefined ? undefined : hot.rawOutputs.get(key);
          if (!described) {
            described = encodeOutput(tensor, hot.datatypes.get(name) ?? "FP32", true).tensor;
            if (key !== undefined && hot.rawOutputs.size < 1024) hot.rawOutputs.set(key, described);
          }
          response.outputs.push(described);
          const { data } = tensor;
          response.rawOutputContents.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          continue;
        }
        const encoded = encodeOutput(tensor, hot.datatypes.get(name) ?? "FP32", asRaw);
        response.outputs.push(encoded.tensor);
        if (encoded.raw) response.rawOutputContents.push(encoded.raw);
      }
      const totalMs = performance.now() - started;
      recordRequest(model.stats, true, totalMs, rows, queueMs);
      counters.success++;
      counters.inferences += rows;
      counters.queueUs += Math.round(timing.queueMs * 1000);
      counters.requestUs += Math.round(totalMs * 1000);
      return response;
    } catch (error) {
      const e = NearhubError.from(error, Code.Internal);
      recordRequest(model.stats, false, performance.now() - started, rows, queueMs);
      metrics.failure.inc({ ...hot.labels, reason: codeName(e.code) });
      span.setStatus({ code: SpanStatusCode.ERROR, message: e.rawMessage });
      throw error;
    } finally {
      counters.pending--;
      span.end();
    }
  }

  function inferOn(model: LoadedModel, request: ModelInferRequest, ctx: InferCall, started: number) {
    const hot = hotPath(model, metrics);
    // A span of its own only under a recorded call span: an untraced call (no telemetry, or
    // sampled out) skips creating a context for a span nobody would see.
    if (trace.getActiveSpan()?.isRecording() === true) {
      return tracer.startActiveSpan(hot.spanName, hot.spanOptions, (span) =>
        inferLocal(model, hot, request, ctx, started, span),
      );
    }
    return inferLocal(model, hot, request, ctx, started, UNTRACED);
  }

  async function infer(request: ModelInferRequest, ctx: InferCall): Promise<InferResponse> {
    requireName(request.modelName, "model_name");
    if (remotes && (await isRemote(request.modelName, request.modelVersion))) {
      // The service is served without the server's principal context (see service.ts), so the
      // one call a handler forwards enters it here: the remote sees the caller's identity.
      return await runAs(ctx.principal, () => remotes.infer(request, ctx.deadline));
    }
    const started = performance.now();
    // A model loaded and listed is held at once; the rest take the long way (resolve, load).
    const held = models.tryHold(request.modelName, request.modelVersion);
    if (!held) return models.use(request.modelName, request.modelVersion, (m) => inferOn(m, request, ctx, started));
    try {
      return await inferOn(held, request, ctx, started);
    } finally {
      models.release(held);
    }
  }

  return {
    async serverLive() {
      return { live: true };
    },
    async serverReady() {
      return { ready: health.get() === ServingStatus.SERVING };
    },
    async modelReady(request, ctx) {
      requireName(request.name, "name");
      await ctx.authorize("read", modelResource(request.name));
      if (await isRemote(request.name, request.version)) return { ready: true };
      const version = await models.resolveVersion(request.name, request.version);
      return { ready: models.state(request.name, version) === "READY" };
    },
    async serverMetadata() {
      return { name: SERVER_NAME, version: SERVER_VERSION, extensions: ["model_repository", "statistics"] };
    },
    async modelMetadata(request, ctx) {
      requireName(request.name, "name");
      await ctx.authorize("read", modelResource(request.name));
      const listing = (await models.list()).find((m) => m.name === request.name);
      return models.use(request.name, request.version, async (model) => {
        const batched = model.config.max_batch_size > 0;
        const tensor = (t: { name: string; datatype: string; dims: number[] }) => ({
          name: t.name,
          datatype: t.datatype,
          shape: (batched ? [-1, ...t.dims] : t.dims).map((d) => BigInt(d)),
        });
        return {
          name: model.name,
          versions: listing?.versions ?? [model.version],
          platform: "onnxruntime_onnx",
          inputs: model.config.inputs.map(tensor),
          outputs: model.config.outputs.map(tensor),
        };
      });
    },
    modelInfer(request, ctx) {
      const resource = modelResource(request.modelName);
      return ctx.authorize("infer", resource).then(() => {
        recordInference(ctx, resource);
        return infer(request, ctx);
      });
    },
    async *modelStreamInfer(requests, ctx) {
      // Requests run concurrently (so they can share batches); responses go out as they finish,
      // each carrying its request id. A failed request answers error_message and the stream goes on.
      // Its requests have no deadline of their own (the stream's is for the whole stream) and
      // are dropped before compute once the stream is cancelled.
      const itemCall: InferCall = {
        deadline: undefined,
        principal: ctx.principal,
        get aborted() {
          return ctx.aborted;
        },
      };
      const done: Array<{ errorMessage?: string; inferResponse?: InferResponse }> = [];
      let wake: (() => void) | undefined;
      let inFlight = 0;
      let ended = false;
      let readError: unknown;
      const notify = () => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      const finished = (answer: { errorMessage?: string; inferResponse?: InferResponse }) => {
        done.push(answer);
        inFlight--;
        notify();
      };
      // Checked once per model of the stream (the principal cannot change mid-stream).
      const allowed = new Set<string>();
      const reader = (async () => {
        try {
          for await (const request of requests) {
            if (!allowed.has(request.modelName)) {
              try {
                await ctx.authorize("infer", modelResource(request.modelName));
                allowed.add(request.modelName);
              } catch (error) {
                const e = NearhubError.from(error, Code.PermissionDenied);
                done.push({
                  errorMessage: `${codeName(e.code)}: ${e.rawMessage}`,
                  inferResponse: { id: request.id, modelName: request.modelName },
                });
                notify();
                continue;
              }
            }
            recordInference(ctx, modelResource(request.modelName));
            while (inFlight >= STREAM_WINDOW) await new Promise<void>((r) => (wake = r));
            inFlight++;
            infer(request, itemCall).then(
              (inferResponse) => finished({ inferResponse }),
              (error: unknown) => {
                const e = NearhubError.from(error, Code.Internal);
                finished({
                  errorMessage: `${codeName(e.code)}: ${e.rawMessage}`,
                  inferResponse: { id: request.id, modelName: request.modelName },
                });
              },
            );
          }
        } catch (error) {
          readError = error;
        } finally {
          ended = true;
          notify();
        }
      })();
      while (true) {
        while (done.length > 0) yield done.shift() as { errorMessage?: string; inferResponse?: InferResponse };
        if (ended && inFlight === 0) break;
        await new Promise<void>((r) => (wake = r));
      }
      await reader;
      if (readError && !ctx.aborted) throw NearhubError.from(readError, Code.Internal);
    },
    async modelStatistics(request, ctx) {
      if (request.name) await ctx.authorize("read", modelResource(request.name));
      const resolved = request.name ? await models.resolveVersion(request.name, request.version) : "";
      const rows = models.statistics(request.name || undefined, request.version || undefined);
      // A model that has not served yet answers zeros, as Triton does, rather than nothing.
      if (!request.name) rows.splice(0, rows.length, ...rows.filter((r) => ctx.can("read", modelResource(r.name))));
      if (request.name && rows.length === 0) {
        rows.push({ name: request.name, version: resolved, stats: new ModelStats(), memoryBytes: 0 });
      }
      const d = (x: { count: number; ns: number }) => ({ count: BigInt(x.count), ns: BigInt(x.ns) });
      return {
        modelStats: rows.map(({ name, version, stats, memoryBytes }) => ({
          name,
          version,
          lastInference: BigInt(stats.lastInference),
          inferenceCount: BigInt(stats.inferenceCount),
          executionCount: BigInt(stats.executionCount),
          inferenceStats: {
            success: d(stats.success),
            fail: d(stats.fail),
            queue: d(stats.queue),
            computeInfer: d(stats.computeInfer),
          },
          batchStats: [...stats.batches]
            .sort(([a], [b]) => a - b)
            .map(([size, dur]) => ({ batchSize: BigInt(size), computeInfer: d(dur) })),
          memoryUsage: memoryBytes > 0 ? [{ type: "CPU", id: 0n, byteSize: BigInt(memoryBytes) }] : [],
        })),
      };
    },
    async repositoryIndex(request, ctx) {
      const local = await models.index(request.ready);
      const remote = (remotes?.index() ?? []).filter((r) => !local.some((l) => l.name === r.name));
      return { models: [...local, ...remote].filter((m) => ctx.can("read", modelResource(m.name))) };
    },
    async repositoryModelLoad(request, ctx) {
      requireName(request.modelName, "model_name");
      await ctx.authorize("load", modelResource(request.modelName));
      const version = await models.resolveVersion(request.modelName, "");
      await models.load(request.modelName, version);
      return {};
    },
    async repositoryModelUnload(request, ctx) {
      requireName(request.modelName, "model_name");
      await ctx.authorize("load", modelResource(request.modelName));
      const unloaded = await models.unload(request.modelName);
      if (unloaded === 0) await models.resolveVersion(request.modelName, "");
      return {};
    },
  };
}

/** The RBAC resource of a served model: the registry repo `models/<name>`. */
export function modelResource(name: string): string {
  return `models/${name}`;
}
