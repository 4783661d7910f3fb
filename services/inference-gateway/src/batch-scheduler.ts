import { Code, NearhubError } from "@nearhub/platform";
import type { ExecutionBackend } from "./onnx-backend.js";
import type { WorkerTensor } from "./onnx-protocol.js";
import { concatRows, sliceRows } from "./tensor-codec.js";

/** The most independent requests handed to one instance at once when batching is off. */
const MAX_GROUP = 32;

/** How a model's requests are scheduled onto its instances. */
export interface SchedulerOptions {
  /** > 0 enables concatenation along the batch dimension up to this many rows. */
  maxBatchSize: number;
  /** Whether requests are combined at all (Triton's `dynamic_batching`). */
  dynamicBatching: boolean;
  /** A batch this large goes at once; smaller ones wait up to the queue delay for more. */
  preferredBatchSizes: number[];
  maxQueueDelayMicros: number;
  /** Requests waiting for an instance before new ones are refused. */
  maxQueueSize: number;
  /** The outputs every execution computes. */
  outputs: string[];
  /** The model, for messages. */
  label: string;
}

/** What one execution did, for statistics and metrics. */
export interface ExecutionReport {
  batchSize: number;
  requests: number;
  computeMs: number;
}

/** What a request waited and cost. */
export interface RequestTiming {
  queueMs: number;
  computeMs: number;
  batchSize: number;
}

interface Item {
  tensors: WorkerTensor[];
  batch: number;
  shapeKey: string;
  enqueuedAt: number;
  deadline: number | undefined;
  signal: AbortSignal | undefined;
  call: CallState | undefined;
  onAbort: (() => void) | undefined;
  resolve: (value: { outputs: WorkerTensor[]; timing: RequestTiming }) => void;
  reject: (error: unknown) => void;
}

/** The state of the call a request belongs to, polled when its batch is formed. */
export interface CallState {
  /** True once the client cancelled or the deadline passed. */
  readonly aborted?: boolean | undefined;
}

/** One request for {@link BatchScheduler.submit}. */
export interface SubmitRequest {
  tensors: WorkerTensor[];
  batch: number;
  shapeKey: string;
  /** Epoch milliseconds after which the request is dropped before compute. */
  deadline?: number | undefined;
  /** Aborting it takes the request out of the queue at once. */
  signal?: AbortSignal | undefined;
  /**
   * A cheaper alternative to `signal`: polled when the request's batch is formed, so an aborted
   * request is dropped before compute (it holds its queue slot until then).
   */
  call?: CallState | undefined;
}

/**
 * The dynamic batcher and admission control of one loaded model. Requests wait in a bounded
 * queue; when an instance is free, compatible requests (same non-batch shapes) are concatenated
 * along the batch dimension up to max_batch_size, run once, and split back. A batch leaves at
 * once when it reaches the largest preferred size (or max_batch_size), otherwise when its
 * oldest request has waited max_queue_delay. Requests whose deadline passed are dropped before
 * compute. A request that finds an instance free goes at the end of the event-loop turn, with
 * the requests that arrived in the same turn.
 */
export class BatchScheduler {
  private readonly queue: Item[] = [];
  private running = 0;
  /** The wake-up for a batch waiting out its queue delay (a timeout, then immediates for the last ms). */
  private timer: { timeout?: NodeJS.Timeout; immediate?: NodeJS.Immediate } | undefined;
  private idleWaiters: Array<() => void> = [];
  private closed = false;
  /** Executions started (model `run` calls). */
  executions = 0;

  constructor(
    private readonly backend: ExecutionBackend,
    private readonly options: SchedulerOptions,
    private readonly onExecution: (report: ExecutionReport) => void = () => undefined,
    private readonly onDropped: (reason: "deadline" | "cancelled" | "queue_full") => void = () => undefined,
  ) {}

  /** Requests queued or executing. */
  get pending(): number {
    return this.queue.length + this.runningRequests;
  }

  /** Requests waiting in the queue. */
  get queued(): number {
    return this.queue.length;
  }

  private runningRequests = 0;
  /** The hand-off waiting for the end of the current event-loop turn (see {@link pumpAtTurnEnd}). */
  private turnEnd: NodeJS.Immediate | undefined;

  /** Queues a request; resolves with its rows of every output. */
  submit(request: SubmitRequest): Promise<{ outputs: WorkerTensor[]; timing: RequestTiming }> {
    if (this.closed) {
      return Promise.reject(new NearhubError(Code.Unavailable, `${this.options.label} is unloading; retry`));
    }
    // Requests the turn's hand-off will take to a free instance are not waiting for one.
    if (this.queue.length - this.handoffCapacity() >= this.options.maxQueueSize) {
      this.onDropped("queue_full");
      return Promise.reject(
        new NearhubError(
          Code.ResourceExhausted,
          `${this.options.label}: the queue is full (${this.options.maxQueueSize} requests waiting); retry later or raise max_queue_size`,
        ),
      );
    }
    if (request.signal?.aborted) return Promise.reject(deadlineOrCancel(request.signal, this.options.label));
    return new Promise((resolve, reject) => {
      const item: Item = {
        tensors: request.tensors,
        batch: request.batch,
        shapeKey: request.shapeKey,
        enqueuedAt: performance.now(),
        deadline: request.deadline,
        signal: request.signal,
        call: request.call,
        onAbort: undefined,
        resolve,
        reject,
      };
      if (request.signal) {
        item.onAbort = () => {
          const at = this.queue.indexOf(item);
          if (at < 0) return; // already executing: its result is simply not sent
          this.queue.splice(at, 1);
          const error = deadlineOrCancel(request.signal as AbortSignal, this.options.label);
          this.onDropped(error.code === Code.DeadlineExceeded ? "deadline" : "cancelled");
          reject(error);
          this.checkIdle();
        };
        request.signal.addEventListener("abort", item.onAbort, { once: true });
      }
      this.queue.push(item);
      this.pumpAtTurnEnd();
    });
  }

  /**
   * Hands the queue to a free instance once the current turn of the event loop is over rather
   * than at once, so the requests read together (one socket read holds many calls) reach the
   * instance in one message (with dynamic batching, in one execution): a thread hand-off costs
   * a wake-up each way, more CPU than the run of a small model. The wait is the rest of the turn,
   * not a timer. With every instance busy there is nothing to do: a finishing execution pumps.
   */
  private pumpAtTurnEnd(): void {
    if (this.turnEnd || this.running >= this.backend.instances) return;
    this.turnEnd = setImmediate(() => {
      this.turnEnd = undefined;
      this.pump();
    });
  }

  /** How many queued requests the pending hand-off takes to the free instances (0 when none is pending). */
  private handoffCapacity(): number {
    if (!this.turnEnd) return 0;
    const { maxBatchSize, dynamicBatching } = this.options;
    const perInstance = dynamicBatching && maxBatchSize > 0 ? maxBatchSize : this.backend.runMany ? MAX_GROUP : 1;
    return Math.max(0, this.backend.instances - this.running) * perInstance;
  }

  /** Resolves when nothing is queued or executing. */
  idle(): Promise<void> {
    if (this.queue.length === 0 && this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Refuses new requests; queued and executing ones still finish. */
  close(): void {
    this.closed = true;
    this.pump();
  }

  private checkIdle(): void {
    if (this.queue.length > 0 || this.running > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private pump(): void {
    const { maxBatchSize, dynamicBatching, preferredBatchSizes, maxQueueDelayMicros } = this.options;
    while (this.running < this.backend.instances && this.queue.length > 0) {
      const head = this.queue[0] as Item;
      let picked: Item[];
      if (!dynamicBatching || maxBatchSize === 0) {
        // No concatenation: each request is its own execution, but requests that queued up go
        // to a free instance in one hand-off (when the backend can), sharing the thread wake-ups.
        const free = this.backend.instances - this.running;
        const group = this.backend.runMany ? Math.min(MAX_GROUP, Math.ceil(this.queue.length / free)) : 1;
        picked = this.queue.slice(0, group);
      } else {
        picked = [];
        let rows = 0;
        for (const item of this.queue) {
          if (item.shapeKey !== head.shapeKey || rows + item.batch > maxBatchSize) continue;
          picked.push(item);
          rows += item.batch;
          if (rows === maxBatchSize) break;
        }
        const target = preferredBatchSizes.length > 0 ? Math.max(...preferredBatchSizes) : maxBatchSize;
        const waitedMs = performance.now() - head.enqueuedAt;
        const delayMs = maxQueueDelayMicros / 1000;
        if (rows < target && waitedMs < delayMs && !this.closed) {
          if (!this.timer) this.wakeAfter(delayMs - waitedMs);
          return;
        }
      }
      this.cancelWake();
      if (picked.length === this.queue.length) this.queue.length = 0;
      else if (picked[picked.length - 1] === this.queue[picked.length - 1]) this.queue.splice(0, picked.length);
      else {
        const pickedSet = new Set(picked);
        for (let i = this.queue.length - 1; i >= 0; i--)
          if (pickedSet.has(this.queue[i] as Item)) this.queue.splice(i, 1);
      }
      const now = Date.now();
      const live: Item[] = [];
      for (const item of picked) {
        if (item.signal && item.onAbort) item.signal.removeEventListener("abort", item.onAbort);
        const expired = item.deadline !== undefined && item.deadline <= now;
        if (expired || item.signal?.aborted || item.call?.aborted) {
          const error = item.signal?.aborted
            ? deadlineOrCancel(item.signal, this.options.label)
            : expired
              ? new NearhubError(Code.DeadlineExceeded, `${this.options.label}: the deadline passed while queued`)
              : new NearhubError(Code.Cancelled, `${this.options.label}: the request was cancelled while queued`);
          this.onDropped(error.code === Code.DeadlineExceeded ? "deadline" : "cancelled");
          item.reject(error);
        } else live.push(item);
      }
      if (live.length === 0) continue;
      if (!dynamicBatching || maxBatchSize === 0) {
        if (live.length === 1) void this.execute(live);
        else void this.executeGroup(live);
      } else void this.execute(live);
    }
    this.checkIdle();
  }

  /**
   * Pumps again after `ms`. A timer alone cannot wait less than a millisecond (and may wake
   * a millisecond late), which would dominate a queue delay of a few hundred microseconds:
   * the last millisecond is waited out with immediates against the clock instead.
   */
  private wakeAfter(ms: number): void {
    const at = performance.now() + ms;
    const timer: { timeout?: NodeJS.Timeout; immediate?: NodeJS.Immediate } = {};
    this.timer = timer;
    const poll = () => {
      timer.immediate = undefined;
      timer.timeout = undefined;
      if (this.timer !== timer) return;
      const left = at - performance.now();
      if (left > 1.5) timer.timeout = setTimeout(poll, left - 1);
      else if (left > 0) timer.immediate = setImmediate(poll);
      else {
        this.timer = undefined;
        this.pump();
      }
    };
    poll();
  }

  private cancelWake(): void {
    const timer = this.timer;
    if (!timer) return;
    this.timer = undefined;
    if (timer.timeout) clearTimeout(timer.timeout);
    if (timer.immediate) clearImmediate(timer.immediate);
  }

  /** Independent requests (no concatenation) sent to one instance together; each settles alone. */
  private async executeGroup(items: Item[]): Promise<void> {
    this.running++;
    this.runningRequests += items.length;
    this.executions += items.length;
    const started = performance.now();
    try {
      const outcomes = await (this.backend.runMany as NonNullable<ExecutionBackend["runMany"]>)(
        items.map((i) => ({ feeds: i.tensors, outputs: this.options.outputs })),
      );
      items.forEach((item, k) => {
        const outcome = outcomes[k];
        if (!outcome || "error" in outcome) {
          item.reject(outcome?.error ?? new NearhubError(Code.Internal, `${this.options.label}: no result`));
          return;
        }
        this.onExecution({ batchSize: item.batch, requests: 1, computeMs: outcome.computeMs });
        item.resolve({
          outputs: outcome.outputs,
          timing: { queueMs: started - item.enqueuedAt, computeMs: outcome.computeMs, batchSize: item.batch },
        });
      });
    } catch (error) {
      for (const item of items) item.reject(error);
    } finally {
      this.running--;
      this.runningRequests -= items.length;
      this.pump();
    }
  }

  private async execute(items: Item[]): Promise<void> {
    this.running++;
    this.runningRequests += items.length;
    this.executions++;
    const started = performance.now();
    const rows = items.reduce((n, i) => n + i.batch, 0);
    try {
      const feeds =
        items.length === 1
          ? (items[0] as Item).tensors
          : (items[0] as Item).tensors.map((_, k) => concatRows(items.map((i) => i.tensors[k] as WorkerTensor)));
      const result = await this.backend.run(feeds, this.options.outputs);
      this.onExecution({ batchSize: rows, requests: items.length, computeMs: result.computeMs });
      let offset = 0;
      for (const item of items) {
        const outputs =
          items.length === 1
            ? result.outputs
            : result.outputs.map((o) => {
                if (o.dims[0] !== rows) {
                  throw new NearhubError(
                    Code.Internal,
                    `${this.options.label}: output ${o.name} has ${o.dims[0] ?? 0} rows for a batch of ${rows}; the model does not keep the batch dimension, so disable dynamic_batching`,
                  );
                }
                return sliceRows(o, offset, item.batch);
              });
        offset += item.batch;
        item.resolve({
          outputs,
          timing: { queueMs: started - item.enqueuedAt, computeMs: result.computeMs, batchSize: rows },
        });
      }
    } catch (error) {
      for (const item of items) item.reject(error);
    } finally {
      this.running--;
      this.runningRequests -= items.length;
      this.pump();
    }
  }
}

function deadlineOrCancel(signal: AbortSignal, label: string): NearhubError {
  const reason: unknown = signal.reason;
  if (reason instanceof NearhubError) {
    if (reason.code === Code.DeadlineExceeded) {
      return new NearhubError(
        Code.DeadlineExceeded,
        `${label}: the deadline passed while queued; dropped before compute`,
      );
    }
    return reason;
  }
  return new NearhubError(Code.Cancelled, `${label}: the request was cancelled while queued`);
}
