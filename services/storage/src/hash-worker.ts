import { Worker } from "node:worker_threads";
import { alignedBuffer } from "./aligned-memory.js";

// CommonJS, evaluated in the worker: keyed sha256 states fed from regions of shared buffers.
// Messages are handled in order, so an answer to one covers every update posted before it.
const SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const hashes = new Map();
parentPort.on("message", (m) => {
  try {
    if (m.op === "update") {
      let h = hashes.get(m.key);
      if (!h) hashes.set(m.key, (h = createHash("sha256")));
      h.update(new Uint8Array(m.buffer, m.offset, m.length));
    } else if (m.op === "digest") {
      const h = hashes.get(m.key) ?? createHash("sha256");
      hashes.delete(m.key);
      parentPort.postMessage({ id: m.id, digest: h.digest("hex") });
    } else if (m.op === "peek") {
      const h = hashes.get(m.key) ?? createHash("sha256");
      parentPort.postMessage({ id: m.id, digest: h.copy().digest("hex") });
    } else if (m.op === "drop") {
      hashes.delete(m.key);
    } else if (m.op === "sync") {
      parentPort.postMessage({ id: m.id });
    }
  } catch (error) {
    if (m.id !== undefined) parentPort.postMessage({ id: m.id, error: String(error) });
  }
});
`;

/**
 * sha256 on a worker thread, so hashing the bytes of uploads does not hold the thread that
 * serves gRPC: the chunk bytes are in shared memory ({@link sharedBuffer}) and only their place
 * is posted. One worker per process, started on first use, never keeping the process alive.
 */
export class HashWorker {
  private worker: Worker | undefined;
  /** Counts worker threads started: a key's state lives only as long as its thread. */
  private generation = 0;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (digest: string) => void; reject: (e: Error) => void }>();

  private get thread(): Worker {
    if (!this.worker) {
      const worker = new Worker(SOURCE, { eval: true });
      this.generation++;
      worker.unref();
      worker.on("message", (m: { id: number; digest?: string; error?: string }) => {
        const w = this.waiting.get(m.id);
        this.waiting.delete(m.id);
        if (m.error !== undefined) w?.reject(new Error(`hashing failed: ${m.error}`));
        else w?.resolve(m.digest ?? "");
      });
      const fail = (error: Error) => {
        for (const w of this.waiting.values()) w.reject(error);
        this.waiting.clear();
        this.worker = undefined;
      };
      worker.on("error", fail);
      worker.on("exit", (code) => fail(new Error(`the hash worker exited with code ${code}`)));
      this.worker = worker;
    }
    return this.worker;
  }

  /**
   * Adds `bytes` (a view of a shared buffer, left unchanged until the next answer) to `key`.
   * Returns the generation of the worker thread that took them: when it differs from the one
   * that took earlier bytes of `key`, those were lost with their thread.
   */
  update(key: string, bytes: Uint8Array): number {
    if (!(bytes.buffer instanceof SharedArrayBuffer)) throw new TypeError("HashWorker.update needs shared memory");
    const thread = this.thread;
    thread.postMessage({ op: "update", key, buffer: bytes.buffer, offset: bytes.byteOffset, length: bytes.byteLength });
    return this.generation;
  }

  /** The generation of the current worker thread (0 before the first). */
  get current(): number {
    return this.worker ? this.generation : 0;
  }

  /** The digest of everything added to `key`, which is then forgotten. */
  digest(key: string): Promise<string> {
    return this.ask({ op: "digest", key });
  }

  /** The digest so far; `key` can take more. */
  peek(key: string): Promise<string> {
    return this.ask({ op: "peek", key });
  }

  drop(key: string): void {
    this.worker?.postMessage({ op: "drop", key });
  }

  /** Resolves once every update posted so far has been hashed (their bytes may change again). */
  async settled(): Promise<void> {
    await this.ask({ op: "sync" });
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }

  private ask(message: Record<string, unknown>): Promise<string> {
    const id = this.nextId++;
    const thread = this.thread;
    // Kept alive while an answer is awaited, and not otherwise.
    if (this.waiting.size === 0) thread.ref();
    return new Promise<string>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      thread.postMessage({ ...message, id });
    }).finally(() => {
      if (this.waiting.size === 0) this.worker?.unref();
    });
  }
}

/** A buffer in shared memory, which {@link HashWorker} reads in place (page-aligned, see alignedBuffer). */
export function sharedBuffer(size: number): Buffer {
  return alignedBuffer(size, true);
}
