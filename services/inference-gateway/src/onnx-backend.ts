import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import { Code, NearhubError } from "@nearhub/platform";
import type { GraphValue, RunResult, WorkerRequest, WorkerResponse, WorkerTensor } from "./onnx-protocol.js";
import { WORKER_SOURCE } from "./onnx-worker.js";

/** What a model backend must do: run one (possibly batched) execution on a free instance. */
export interface ExecutionBackend {
  /** Number of instances that can run at once. */
  readonly instances: number;
  /** Runs the model; `outputs` names the outputs to return. */
  run(feeds: WorkerTensor[], outputs: string[]): Promise<{ outputs: WorkerTensor[]; computeMs: number }>;
  /**
   * Optional: several independent runs on one instance in a single hand-off (one thread
   * wake-up each way instead of one per run); each run succeeds or fails on its own.
   */
  runMany?(runs: Array<{ feeds: WorkerTensor[]; outputs: string[] }>): Promise<RunOutcome[]>;
  /** Releases the instances; pending runs fail. */
  close(): Promise<void>;
}

/** What one run of {@link ExecutionBackend.runMany} gave. */
export type RunOutcome = { outputs: WorkerTensor[]; computeMs: number } | { error: NearhubError };

/** The loaded graph's signature as ONNX Runtime reports it. */
export interface GraphSignature {
  inputs: GraphValue[];
  outputs: GraphValue[];
}

const ORT_PATH = createRequire(import.meta.url).resolve("onnxruntime-node");

function startWorker(workerData: Record<string, unknown>): Worker {
  return new Worker(WORKER_SOURCE, { eval: true, workerData: { ...workerData, ortPath: ORT_PATH } });
}

interface Instance {
  worker: Worker;
  busy: boolean;
}

interface Pending {
  resolve: (results: RunResult[]) => void;
  reject: (error: unknown) => void;
  instance: Instance;
}

function rejected(message: string): NearhubError {
  return new NearhubError(Code.InvalidArgument, `the model rejected the inputs: ${message}`);
}

/**
 * The built-in backend: N ONNX Runtime sessions, each in its own worker thread. `run` goes to
 * an idle instance; the caller (the scheduler) never sends more runs than there are instances,
 * and extra calls wait for one to free up.
 */
export class OnnxBackend implements ExecutionBackend {
  private readonly pool: Instance[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly waiters: Array<(instance: Instance) => void> = [];
  private nextId = 1;
  private closed = false;

  private constructor(readonly instances: number) {}

  /** Starts `instances` workers on the model bytes; resolves once every session is created. */
  static async load(
    model: Uint8Array,
    options: { instances: number; intraOpThreads: number },
  ): Promise<{ backend: OnnxBackend; signature: GraphSignature }> {
    const backend = new OnnxBackend(options.instances);
    try {
      const signatures = await Promise.all(
        Array.from({ length: options.instances }, () => backend.spawn(model, options.intraOpThreads)),
      );
      return { backend, signature: signatures[0] as GraphSignature };
    } catch (error) {
      await backend.close();
      throw error;
    }
  }

  private spawn(model: Uint8Array, intraOpThreads: number): Promise<GraphSignature> {
    const worker = startWorker({ model, intraOpThreads });
    const instance: Instance = { worker, busy: false };
    this.pool.push(instance);
    return new Promise<GraphSignature>((resolve, reject) => {
      worker.on("message", (message: WorkerResponse) => {
        switch (message.type) {
          case "ready":
            resolve({ inputs: message.inputs, outputs: message.outputs });
            break;
          case "load-error":
            reject(
              new NearhubError(
                Code.FailedPrecondition,
                `ONNX Runtime cannot load the model: ${message.message} (check that the file is a valid ONNX model)`,
              ),
            );
            break;
          case "results": {
            const p = this.pending.get(message.id);
            if (!p) return;
            this.pending.delete(message.id);
            this.release(p.instance);
            p.resolve(message.results);
            break;
          }
        }
      });
      worker.on("error", (error) => {
        reject(error);
        this.failInstance(instance, error);
      });
      worker.on("exit", (code) => {
        if (!this.closed) this.failInstance(instance, new Error(`ONNX Runtime worker exited with code ${code}`));
      });
    });
  }

  private failInstance(instance: Instance, error: Error): void {
    for (const [id, p] of this.pending) {
      if (p.instance !== instance) continue;
      this.pending.delete(id);
      p.reject(new NearhubError(Code.Internal, `model instance failed: ${error.message}`, { cause: error }));
    }
  }

  private release(instance: Instance): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(instance);
    else instance.busy = false;
  }

  private acquire(): Promise<Instance> {
    const idle = this.pool.find((i) => !i.busy);
    if (idle) {
      idle.busy = true;
      return Promise.resolve(idle);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async run(feeds: WorkerTensor[], outputs: string[]): Promise<{ outputs: WorkerTensor[]; computeMs: number }> {
    const [result] = await this.post([{ feeds, outputs }]);
    if (!result || "error" in result) throw rejected(result?.error ?? "no result");
    return result;
  }

  async runMany(runs: Array<{ feeds: WorkerTensor[]; outputs: string[] }>): Promise<RunOutcome[]> {
    const results = await this.post(runs);
    return results.map((r) => ("error" in r ? { error: rejected(r.error) } : r));
  }

  /** One message to an idle instance carrying every run; the inputs' buffers move, not copy. */
  private async post(runs: Array<{ feeds: WorkerTensor[]; outputs: string[] }>): Promise<RunResult[]> {
    if (this.closed) throw new NearhubError(Code.Unavailable, "the model was unloaded; retry to load it again");
    const instance = await this.acquire();
    const id = this.nextId++;
    // Inputs whose array owns its whole buffer move to the worker; views into a larger buffer
    // (the request's bytes) are copied first, so the clone never carries the rest of it.
    const transfer: ArrayBuffer[] = [];
    const owned = runs.map((run) => ({
      outputs: run.outputs,
      feeds: run.feeds.map((f) => {
        if (Array.isArray(f.data)) return f;
        const whole =
          f.data.buffer instanceof ArrayBuffer &&
          f.data.byteOffset === 0 &&
          f.data.byteLength === f.data.buffer.byteLength;
        const data = whole && !transfer.includes(f.data.buffer as ArrayBuffer) ? f.data : f.data.slice();
        transfer.push(data.buffer as ArrayBuffer);
        return data === f.data ? f : { ...f, data };
      }),
    }));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, instance });
      const message: WorkerRequest = { type: "run", id, runs: owned };
      instance.worker.postMessage(message, transfer);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      this.pool.map(async (instance) => {
        const exited = new Promise<void>((resolve) => instance.worker.once("exit", () => resolve()));
        instance.worker.postMessage({ type: "close" } satisfies WorkerRequest);
        const timer = setTimeout(() => void instance.worker.terminate(), 2000);
        await exited;
        clearTimeout(timer);
      }),
    );
    for (const [, p] of this.pending) p.reject(new NearhubError(Code.Unavailable, "the model was unloaded"));
    this.pending.clear();
  }
}
