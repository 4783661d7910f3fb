import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** A cumulative count and duration, as Triton's StatisticDuration. */
export interface Duration {
  count: number;
  ns: number;
}

/** Cumulative statistics of one model version (Triton's ModelStatistics). */
export class ModelStats {
  lastInference = 0;
  inferenceCount = 0;
  executionCount = 0;
  readonly success: Duration = { count: 0, ns: 0 };
  readonly fail: Duration = { count: 0, ns: 0 };
  readonly queue: Duration = { count: 0, ns: 0 };
  readonly computeInfer: Duration = { count: 0, ns: 0 };
  /** Per executed batch size: count and compute time. */
  readonly batches = new Map<number, Duration>();
}

function add(d: Duration, ms: number): void {
  d.count++;
  d.ns += Math.round(ms * 1e6);
}

/** Records a finished request. */
export function recordRequest(stats: ModelStats, ok: boolean, totalMs: number, rows: number, queueMs?: number): void {
  stats.lastInference = Date.now();
  add(ok ? stats.success : stats.fail, totalMs);
  if (ok) stats.inferenceCount += rows;
  if (queueMs !== undefined) add(stats.queue, queueMs);
}

/** Records one model execution. */
export function recordExecution(stats: ModelStats, batchSize: number, computeMs: number): void {
  stats.executionCount++;
  add(stats.computeInfer, computeMs);
  let b = stats.batches.get(batchSize);
  if (!b) stats.batches.set(batchSize, (b = { count: 0, ns: 0 }));
  add(b, computeMs);
}

/**
 * The per-request counters of one model version: plain numbers the request path adds to, read
 * into the Prometheus metrics when they are scraped (a labelled prom-client update hashes its
 * labels on every call, several times per request).
 */
export class RequestCounters {
  success = 0;
  inferences = 0;
  queueUs = 0;
  requestUs = 0;
  /** Requests queued or executing. */
  pending = 0;
  executions = 0;
  computeUs = 0;
}

/**
 * Prometheus metrics per model and version, named as Triton names them so existing
 * dashboards and alerts work: request success/failure, inference and execution counts,
 * cumulative queue and compute microseconds, pending requests; plus a batch size histogram,
 * load outcomes and admission drops.
 */
export class InferenceMetrics {
  readonly success: Counter<"model" | "version">;
  readonly failure: Counter<"model" | "version" | "reason">;
  readonly inferenceCount: Counter<"model" | "version">;
  readonly execCount: Counter<"model" | "version">;
  readonly queueUs: Counter<"model" | "version">;
  readonly computeInferUs: Counter<"model" | "version">;
  readonly requestUs: Counter<"model" | "version">;
  readonly pending: Gauge<"model" | "version">;
  readonly batchSize: Histogram<"model" | "version">;
  readonly loads: Counter<"model" | "result">;
  readonly unloads: Counter<"model" | "reason">;
  readonly loadSeconds: Histogram<"model">;
  readonly memoryBytes: Gauge;
  readonly dropped: Counter<"model" | "reason">;
  private readonly perModel = new Map<
    string,
    { labels: { model: string; version: string }; counters: RequestCounters }
  >();

  /** The request counters of one model version (kept across unloads: the counters only grow). */
  counters(model: string, version: string): RequestCounters {
    const key = `${model}\u0000${version}`;
    let entry = this.perModel.get(key);
    if (!entry) this.perModel.set(key, (entry = { labels: { model, version }, counters: new RequestCounters() }));
    return entry.counters;
  }

  constructor(registry: Registry) {
    const registers = [registry];
    const mv = ["model", "version"] as const;
    const perModel = this.perModel;
    /** A collect callback publishing one field of every model's counters. */
    const from = (field: keyof RequestCounters) =>
      function (this: Counter<"model" | "version"> | Gauge<"model" | "version">): void {
        this.reset();
        for (const { labels, counters } of perModel.values()) {
          if (this instanceof Gauge) this.set(labels, counters[field]);
          else this.inc(labels, counters[field]);
        }
      };
    this.success = new Counter({
      name: "nv_inference_request_success",
      help: "Successful inference requests",
      labelNames: mv,
      registers,
      collect: from("success"),
    });
    this.failure = new Counter({
      name: "nv_inference_request_failure",
      help: "Failed inference requests by reason (the gRPC status name)",
      labelNames: ["model", "version", "reason"],
      registers,
    });
    this.inferenceCount = new Counter({
      name: "nv_inference_count",
      help: "Inferences performed (batch rows)",
      labelNames: mv,
      registers,
      collect: from("inferences"),
    });
    this.execCount = new Counter({
      name: "nv_inference_exec_count",
      help: "Model executions (batched runs)",
      labelNames: mv,
      registers,
      collect: from("executions"),
    });
    this.queueUs = new Counter({
      name: "nv_inference_queue_duration_us",
      help: "Cumulative time requests waited in the queue",
      labelNames: mv,
      registers,
      collect: from("queueUs"),
    });
    this.computeInferUs = new Counter({
      name: "nv_inference_compute_infer_duration_us",
      help: "Cumulative model execution time",
      labelNames: mv,
      registers,
      collect: from("computeUs"),
    });
    this.requestUs = new Counter({
      name: "nv_inference_request_duration_us",
      help: "Cumulative request handling time",
      labelNames: mv,
      registers,
      collect: from("requestUs"),
    });
    this.pending = new Gauge({
      name: "nv_inference_pending_request_count",
      help: "Requests queued or executing",
      labelNames: mv,
      registers,
      collect: from("pending"),
    });
    this.batchSize = new Histogram({
      name: "nearhub_inference_batch_size",
      help: "Rows per model execution",
      labelNames: mv,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    });
    this.loads = new Counter({
      name: "nearhub_inference_model_loads_total",
      help: "Model loads by result (ok, failed)",
      labelNames: ["model", "result"],
      registers,
    });
    this.unloads = new Counter({
      name: "nearhub_inference_model_unloads_total",
      help: "Model unloads by reason (request, memory_budget, shutdown)",
      labelNames: ["model", "reason"],
      registers,
    });
    this.loadSeconds = new Histogram({
      name: "nearhub_inference_model_load_seconds",
      help: "Time from first request to a ready model (fetch and session creation)",
      labelNames: ["model"],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.memoryBytes = new Gauge({
      name: "nearhub_inference_model_memory_bytes",
      help: "Estimated memory held by loaded models",
      registers,
    });
    this.dropped = new Counter({
      name: "nearhub_inference_dropped_total",
      help: "Requests refused or dropped before compute (queue_full, deadline, cancelled)",
      labelNames: ["model", "reason"],
      registers,
    });
  }
}
