import { createHash, randomUUID } from "node:crypto";
import { EventEmitter, once } from "node:events";
import { mkdir, open, readdir, rename, rm, stat, unlink, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Readable, type Writable } from "node:stream";
import type { Logger } from "@nearhub/platform";
import { Counter, Gauge, type Registry } from "prom-client";

/** The bytes from upstream do not hash to the name they were asked for: nothing is kept. */
export class BlobMismatch extends Error {}

/** A download into the cache that readers can follow while it runs. */
interface Fill {
  sha256: string;
  size: number;
  tmp: string;
  written: number;
  done: boolean;
  error?: Error;
  events: EventEmitter;
  /** Settles when the source has answered (rejects when it could not start). */
  started: Promise<void>;
  /** Settles when the blob is complete and verified, or failed. */
  finished: Promise<void>;
}

/** Something a reader can stream ranges from. */
export interface BlobReader {
  /** Bytes `start`..`end` inclusive. */
  stream(start: number, end: number): Readable;
  /**
   * Writes bytes `start`..`end` inclusive to `out` and ends it, straight from the cached file
   * (hits only; see {@link sendFile}). Resolves early when `out` closes first.
   */
  send?(out: Writable, start: number, end: number): Promise<void>;
  /** Whether the bytes came from the cache (true) or a fill in progress (false). */
  cached: boolean;
}

const PIECE = 1024 * 1024;
/**
 * Read size of the hit path. Per byte a hit costs two kernel copies (page cache into the buffer,
 * buffer into the socket) and next to no JS at this size; the smaller the buffers, the likelier
 * they are still in the CPU cache when the socket copy reads them. On the 2-core bench machine
 * 1 MiB reads sent 10-20% faster than 4 MiB ones; 256 KiB ones lose again to threadpool trips.
 */
const SEND_CHUNK = 1024 * 1024;
/** Buffers per transfer: one is read into while the other is being written to the socket. */
const SEND_BUFFERS = 2;
/**
 * Bytes of large send buffers all transfers together may hold (128 concurrent fast transfers);
 * past it a transfer uses small buffers, slower but bounded, instead of growing memory.
 */
const SEND_BUDGET = 256 * 1024 * 1024;
const SMALL_SEND_CHUNK = 256 * 1024;
/** Large send buffers kept between transfers so a hit does not allocate (and page-fault) anew. */
const SPARE_BUFFERS = 8;
const spare: Buffer[] = [];
let budgetUsed = 0;

/**
 * The edge's hot cache of blobs on local disk, bounded by size with least-recently-used
 * eviction. A miss starts one fill per blob that every concurrent reader follows (one upstream
 * transfer), ranges of a partly written blob are served as the bytes arrive, and the sha256 is
 * verified before the blob becomes visible: until then the last byte is held back, so a
 * mismatch fails every transfer instead of completing it with bad bytes.
 */
export class BlobCache {
  private readonly index = new Map<string, number>();
  private total = 0;
  private readonly fills = new Map<string, Fill>();
  private readonly hits: Counter;
  private readonly bytes: Gauge;
  private readonly fillsDone: Counter;

  constructor(
    readonly dir: string,
    readonly maxBytes: number,
    private readonly logger: Logger,
    registry: Registry,
  ) {
    this.hits = new Counter({
      name: "nearhub_hf_cache_lookups_total",
      help: "Hot-cache lookups by result (hit, joined a fill in progress, miss).",
      labelNames: ["result"],
      registers: [registry],
    });
    this.fillsDone = new Counter({
      name: "nearhub_hf_cache_fills_total",
      help: "Hot-cache fills by outcome (stored, mismatch, failed).",
      labelNames: ["outcome"],
      registers: [registry],
    });
    this.bytes = new Gauge({
      name: "nearhub_hf_cache_bytes",
      help: "Bytes held in the edge's hot cache.",
      registers: [registry],
      collect: () => this.bytes.set(this.total),
    });
  }

  private pathOf(sha256: string): string {
    return join(this.dir, "blobs", sha256);
  }

  /** Creates the folders, drops unfinished fills, and indexes what is there (oldest first). */
  async init(): Promise<void> {
    await rm(join(this.dir, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.dir, "tmp"), { recursive: true });
    await mkdir(join(this.dir, "blobs"), { recursive: true });
    const found: Array<{ sha: string; size: number; used: number }> = [];
    for (const name of await readdir(join(this.dir, "blobs"))) {
      if (!/^[0-9a-f]{64}$/.test(name)) continue;
      const s = await stat(this.pathOf(name));
      found.push({ sha: name, size: s.size, used: s.atimeMs });
    }
    found.sort((a, b) => a.used - b.used);
    for (const f of found) this.add(f.sha, f.size);
    this.evict();
  }

  has(sha256: string): boolean {
    return this.index.has(sha256);
  }

  private add(sha256: string, size: number): void {
    if (this.index.has(sha256)) this.total -= this.index.get(sha256)!;
    this.index.delete(sha256);
    this.index.set(sha256, size);
    this.total += size;
  }

  private touch(sha256: string): void {
    const size = this.index.get(sha256);
    if (size === undefined) return;
    this.index.delete(sha256);
    this.index.set(sha256, size);
  }

  private evict(): void {
    for (const [sha, size] of this.index) {
      if (this.total <= this.maxBytes || this.index.size <= 1) break;
      this.index.delete(sha);
      this.total -= size;
      // Open readers keep their descriptor; the name goes now.
      unlink(this.pathOf(sha)).catch(() => undefined);
    }
  }

  /** Puts bytes already verified by the caller (small files read whole). */
  async putVerified(sha256: string, bytes: Uint8Array): Promise<void> {
    if (this.index.has(sha256)) return;
    const tmp = join(this.dir, "tmp", `${sha256}.${randomUUID()}`);
    await writeFile(tmp, bytes);
    await rename(tmp, this.pathOf(sha256));
    this.add(sha256, bytes.byteLength);
    this.evict();
  }

  /** The path of a complete cached blob (for uploads), or undefined. */
  completePath(sha256: string): string | undefined {
    return this.index.has(sha256) ? this.pathOf(sha256) : undefined;
  }

  /**
   * A reader of the blob: from disk when cached, else following the fill in progress, else
   * starting one from `source` (which throws to refuse, e.g. the upstream's 404). `onStored`
   * runs once the verified blob is in the cache.
   */
  async open(
    sha256: string,
    size: number,
    source: () => Promise<AsyncIterable<Uint8Array>>,
    onStored?: (path: string) => void,
  ): Promise<BlobReader> {
    for (let attempt = 0; attempt < 3; attempt++) {
      if (this.index.has(sha256)) {
        try {
          const fh = await open(this.pathOf(sha256), "r");
          this.touch(sha256);
          this.hits.inc({ result: "hit" });
          return {
            cached: true,
            stream: (start, end) => fileStream(fh, start, end),
            send: (out, start, end) => sendFile(fh, out, start, end),
          };
        } catch {
          this.index.delete(sha256);
          continue;
        }
      }
      let fill = this.fills.get(sha256);
      if (fill && fill.done) continue;
      this.hits.inc({ result: fill ? "joined" : "miss" });
      fill ??= this.startFill(sha256, size, source, onStored);
      await fill.started;
      let fh: FileHandle;
      try {
        fh = await open(fill.tmp, "r");
      } catch {
        continue; // finished (renamed) or failed between the checks: look again
      }
      const f = fill;
      return { cached: false, stream: (start, end) => Readable.from(followFill(f, fh, start, end)) };
    }
    throw new Error(`the cached blob ${sha256} changed while it was opened; retry`);
  }

  private startFill(
    sha256: string,
    size: number,
    source: () => Promise<AsyncIterable<Uint8Array>>,
    onStored?: (path: string) => void,
  ): Fill {
    const events = new EventEmitter();
    events.setMaxListeners(0);
    let markStarted!: () => void;
    let failStart!: (e: Error) => void;
    const started = new Promise<void>((resolve, reject) => {
      markStarted = resolve;
      failStart = reject;
    });
    started.catch(() => undefined);
    const fill: Fill = {
      sha256,
      size,
      tmp: join(this.dir, "tmp", `${sha256}.${randomUUID()}`),
      written: 0,
      done: false,
      events,
      started,
      finished: Promise.resolve(),
    };
    this.fills.set(sha256, fill);
    fill.finished = (async () => {
      let fh: FileHandle | undefined;
      let began = false;
      try {
        fh = await open(fill.tmp, "w");
        const chunks = await source();
        began = true;
        markStarted();
        const hash = createHash("sha256");
        for await (const chunk of chunks) {
          if (fill.written + chunk.byteLength > size) {
            throw new BlobMismatch(`the upstream sent more than the ${size} bytes of blob ${sha256}`);
          }
          await fh.write(chunk);
          hash.update(chunk);
          fill.written += chunk.byteLength;
          events.emit("progress");
        }
        if (fill.written !== size) {
          throw new BlobMismatch(`the upstream sent ${fill.written} of the ${size} bytes of blob ${sha256}`);
        }
        const actual = hash.digest("hex");
        if (actual !== sha256) {
          throw new BlobMismatch(
            `the upstream's bytes hash to sha256 ${actual}, not the expected ${sha256}; discarded`,
          );
        }
        await fh.close();
        fh = undefined;
        await rename(fill.tmp, this.pathOf(sha256));
        this.add(sha256, size);
        fill.done = true;
        this.fillsDone.inc({ outcome: "stored" });
        events.emit("progress");
        this.evict();
        onStored?.(this.pathOf(sha256));
      } catch (error) {
        fill.error = error as Error;
        this.fillsDone.inc({ outcome: error instanceof BlobMismatch ? "mismatch" : "failed" });
        if (error instanceof BlobMismatch) this.logger.error("blob failed verification; discarded", { sha256, error });
        else this.logger.warn("blob fill failed", { sha256, error });
        if (!began) failStart(error as Error);
        events.emit("progress");
        await fh?.close().catch(() => undefined);
        await unlink(fill.tmp).catch(() => undefined);
      } finally {
        this.fills.delete(sha256);
      }
    })();
    return fill;
  }

  /** Waits for a fill in progress (tests and the mirroring code). */
  async settled(sha256: string): Promise<void> {
    await this.fills.get(sha256)?.finished;
  }
}

function fileStream(fh: FileHandle, start: number, end: number): Readable {
  if (end < start) {
    void fh.close();
    return Readable.from([]);
  }
  return fh.createReadStream({ start, end, highWaterMark: PIECE, autoClose: true });
}

/**
 * Sends bytes `start`..`end` of an open file to `out` and ends it, with the least work per byte
 * Node allows: reads of up to 1 MiB into two reused buffers, each written as it is (no stream
 * transform, no copy, no hash) and read into again only once the socket has taken its bytes,
 * which is also the backpressure: at most two buffers of a transfer are in flight. Stops when
 * `out` closes (the client went away); always closes the file.
 */
export async function sendFile(fh: FileHandle, out: Writable, start: number, end: number): Promise<void> {
  const length = end - start + 1;
  if (length <= 0) {
    await fh.close().catch(() => undefined);
    out.end();
    return;
  }
  if (length <= PIECE) {
    // A small file: one read, one write of a buffer of just its size, not reused.
    try {
      const buffer = Buffer.allocUnsafe(length);
      await readFully(fh, buffer, length, start);
      if (!out.destroyed) out.end(buffer);
    } finally {
      await fh.close().catch(() => undefined);
    }
    return;
  }
  let closed = out.destroyed;
  let finished = false;
  let allocated = 0;
  const free: Buffer[] = [];
  const waiting: Array<(buffer: Buffer | undefined) => void> = [];
  // Large buffers this transfer holds against the budget, until they go back to the spares.
  const held = new Set<Buffer>();
  const giveBack = (buffer: Buffer) => {
    if (!held.delete(buffer)) return;
    budgetUsed -= SEND_CHUNK;
    if (spare.length < SPARE_BUFFERS) spare.push(buffer);
  };
  const onClose = () => {
    closed = true;
    for (const wake of waiting.splice(0)) wake(undefined);
    if (finished) {
      // A write that never completed (the socket died) never hands its buffer back: the
      // buffer is left to the garbage collector and its share of the budget freed here.
      budgetUsed -= SEND_CHUNK * held.size;
      held.clear();
    }
  };
  out.once("close", onClose);
  // A buffer comes back once the socket has taken its bytes.
  const release = (buffer: Buffer, error?: Error | null) => {
    if (error) onClose();
    if (finished) return giveBack(buffer);
    const wake = waiting.shift();
    if (wake) wake(buffer);
    else free.push(buffer);
  };
  const take = (): Buffer | undefined | Promise<Buffer | undefined> => {
    if (closed) return undefined;
    const ready = free.pop();
    if (ready) return ready;
    if (allocated < SEND_BUFFERS) {
      allocated++;
      if (budgetUsed + SEND_CHUNK > SEND_BUDGET) return Buffer.allocUnsafeSlow(SMALL_SEND_CHUNK);
      budgetUsed += SEND_CHUNK;
      const buffer = spare.pop() ?? Buffer.allocUnsafeSlow(SEND_CHUNK);
      held.add(buffer);
      return buffer;
    }
    return new Promise((resolve) => waiting.push(resolve));
  };
  try {
    for (let pos = start; pos <= end;) {
      const buffer = await take();
      if (!buffer || closed) return;
      const want = Math.min(buffer.length, end + 1 - pos);
      await readFully(fh, buffer, want, pos);
      pos += want;
      if (closed) {
        release(buffer);
        return;
      }
      out.write(want === buffer.length ? buffer : buffer.subarray(0, want), (error) => release(buffer, error));
    }
    out.end();
  } finally {
    finished = true;
    for (const buffer of free.splice(0)) giveBack(buffer);
    // Closed already: free what the dead socket holds. Else writes still in flight hand their
    // buffers back, and the close listener stays to catch a socket that dies before they do.
    if (closed) onClose();
    await fh.close().catch(() => undefined);
  }
}

/** Bytes of large send buffers held by transfers now (tests check that it returns to 0). */
export function sendBuffersHeld(): number {
  return budgetUsed;
}

/** Reads exactly `length` bytes at `position` into the start of `buffer`. */
async function readFully(fh: FileHandle, buffer: Buffer, length: number, position: number): Promise<void> {
  for (let filled = 0; filled < length;) {
    const { bytesRead } = await fh.read(buffer, filled, length - filled, position + filled);
    if (bytesRead === 0) throw new Error(`the cached blob ended early at byte ${position + filled}`);
    filled += bytesRead;
  }
}

async function* followFill(fill: Fill, fh: FileHandle, start: number, end: number): AsyncGenerator<Buffer> {
  try {
    let pos = start;
    while (pos <= end) {
      if (fill.error) throw fill.error;
      const available = fill.done ? fill.size : Math.min(fill.written, fill.size - 1);
      if (pos < available) {
        const length = Math.min(available, end + 1, pos + PIECE) - pos;
        const buffer = Buffer.allocUnsafe(length);
        const { bytesRead } = await fh.read(buffer, 0, length, pos);
        if (bytesRead === 0) throw new Error(`blob ${fill.sha256} ended early at byte ${pos}`);
        pos += bytesRead;
        yield buffer.subarray(0, bytesRead);
      } else {
        await once(fill.events, "progress");
      }
    }
  } finally {
    await fh.close().catch(() => undefined);
  }
}
