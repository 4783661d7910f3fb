import { createHash } from "node:crypto";
import { constants, createReadStream } from "node:fs";
import { open, readFile, rename, rm, stat, writeFile, type FileHandle } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, NearhubError, type Client } from "@nearhub/platform";
import type { StorageService } from "@nearhub/proto/storage";
import { alignedBuffer } from "./aligned-memory.js";
import { writeAll } from "./file-io.js";
import { MIN_CHUNK } from "./upload-sessions.js";

/** The storage gRPC client. */
export type StorageClient = Client<typeof StorageService>;

/** Bytes per UploadChunk/PutBlob message: under gRPC's default 4 MiB receive limit. */
export const PIECE = 4 * 1024 * 1024 - 1024;

/** sha256 and size of a file, read once as a stream. */
export async function hashFile(path: string, onBytes?: (n: number) => void): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).byteLength;
    onBytes?.((chunk as Buffer).byteLength);
  }
  return { sha256: hash.digest("hex"), size };
}

/** Codes after which a chunk or range is tried again (the server restarted, the link dropped). */
const RETRYABLE = new Set([
  Code.ResourceExhausted,
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Aborted,
  Code.DataLoss,
  Code.Internal,
  Code.Unknown,
]);

/**
 * How long a call the server refuses with RESOURCE_EXHAUSTED ("too many bytes in flight", "too
 * far ahead of the chunk the blob's hash takes next") keeps being retried: such a refusal says
 * wait for other chunks, which on a slow link can take minutes, so it does not use up attempts.
 */
const BUSY_PATIENCE_MS = 10 * 60_000;

async function withRetry<T>(
  what: string,
  attempts: number,
  signal: AbortSignal | undefined,
  fn: () => Promise<T>,
): Promise<T> {
  let lastError: unknown;
  const patientUntil = Date.now() + BUSY_PATIENCE_MS;
  for (let attempt = 1, tries = 1; attempt <= attempts; attempt++, tries++) {
    signal?.throwIfAborted();
    try {
      return await fn();
    } catch (error) {
      lastError = error;
      const code = error instanceof NearhubError ? error.code : Code.Unknown;
      if (!RETRYABLE.has(code)) break;
      if (code === Code.ResourceExhausted && Date.now() < patientUntil) attempt--;
      else if (attempt === attempts) break;
      await sleep(Math.min(250 * 2 ** tries, 5_000), undefined, { signal });
    }
  }
  const e = NearhubError.from(lastError);
  // Gave up on a failure that may pass (the server restarted, the link dropped): what is stored
  // stays stored, and the same command continues from there.
  const hint = RETRYABLE.has(e.code) ? "; run the same command again to continue where it stopped" : "";
  throw new NearhubError(e.code, `${what}: ${e.rawMessage}${hint}`, { cause: lastError });
}

/** Options of {@link uploadFile}. */
export interface UploadOptions {
  /** Known digest and size (skips hashing the file). */
  sha256?: string;
  size?: number;
  /** 64 MiB when unset. */
  chunkSize?: number;
  /** Chunks in flight; 4 by default. */
  parallel?: number;
  /** Called with the number of bytes each time some are sent or found already stored. */
  onProgress?: (bytes: number) => void;
  signal?: AbortSignal;
  /** Attempts per chunk; 6 by default. */
  attempts?: number;
  /** Per-call deadline for a chunk; 5 minutes by default. */
  chunkTimeoutMs?: number;
}

/** What an upload did. */
export interface UploadResult {
  sha256: string;
  size: number;
  /** True when this upload made the blob visible; false when it was there already. */
  created: boolean;
  chunksSent: number;
  /** Chunks the server already had (a resumed upload). */
  chunksSkipped: number;
  /** Their bytes: what this upload did not have to send. */
  bytesSkipped: number;
}

/**
 * Uploads a file as a content-addressed blob: small files with one PutBlob, larger ones as a
 * resumable session whose missing chunks go up in parallel. Rerunning after an interruption
 * continues the same session (StartUpload finds it by sha256 and size), sending only the
 * chunks the server does not have.
 */
export async function uploadFile(
  client: StorageClient,
  path: string,
  options: UploadOptions = {},
): Promise<UploadResult> {
  const { sha256, size } =
    options.sha256 !== undefined && options.size !== undefined
      ? { sha256: options.sha256, size: options.size }
      : await hashFile(path);
  const attempts = options.attempts ?? 6;
  const timeoutMs = options.chunkTimeoutMs ?? 300_000;
  const signal = options.signal;
  if (size < MIN_CHUNK) {
    const bytes = await readFile(path);
    if (bytes.byteLength !== size) throw new NearhubError(Code.Aborted, `${path} changed while being uploaded`);
    const response = await withRetry(`uploading ${path}`, attempts, signal, () =>
      client.putBlob(
        (async function* () {
          yield { part: { case: "header" as const, value: { sha256, size: BigInt(size) } } };
          for (let i = 0; i < bytes.byteLength; i += PIECE)
            yield { part: { case: "chunk" as const, value: bytes.subarray(i, i + PIECE) } };
        })(),
        { timeoutMs, ...(signal ? { signal } : {}) },
      ),
    );
    options.onProgress?.(size);
    return { sha256, size, created: response.created, chunksSent: 1, chunksSkipped: 0, bytesSkipped: 0 };
  }
  const start = await withRetry(`starting the upload of ${path}`, attempts, signal, () =>
    client.startUpload({ sha256, size: BigInt(size), chunkSize: BigInt(options.chunkSize ?? 0) }),
  );
  if (start.alreadyStored || !start.session) {
    options.onProgress?.(size);
    return { sha256, size, created: false, chunksSent: 0, chunksSkipped: 0, bytesSkipped: size };
  }
  const session = start.session;
  const chunkSize = Number(session.chunkSize);
  const have = new Set(session.received);
  const todo: number[] = [];
  let bytesSkipped = 0;
  for (let i = 0; i < session.chunkCount; i++) {
    if (!have.has(i)) {
      todo.push(i);
      continue;
    }
    const length = Math.min(chunkSize, size - i * chunkSize);
    bytesSkipped += length;
    options.onProgress?.(length);
  }
  const file = await open(path, "r");
  let sent = 0;
  let done;
  try {
    const send = async (indexes: number[]) => {
      const worker = async () => {
        // One buffer per worker, reused: a fresh 64 MiB per chunk costs page faults and GC.
        let whole: Buffer | undefined;
        for (let index = indexes.shift(); index !== undefined; index = indexes.shift()) {
          const offset = index * chunkSize;
          const length = Math.min(chunkSize, size - offset);
          whole ??= Buffer.allocUnsafeSlow(chunkSize);
          const buffer = whole.subarray(0, length);
          const { bytesRead } = await file.read(buffer, 0, length, offset);
          if (bytesRead !== length) throw new NearhubError(Code.Aborted, `${path} changed while being uploaded`);
          const chunkSha = createHash("sha256").update(buffer).digest("hex");
          const i = index;
          await withRetry(`uploading chunk ${i} of ${path}`, attempts, signal, () =>
            client.uploadChunk(
              (async function* () {
                yield {
                  part: {
                    case: "header" as const,
                    value: { sessionId: session.sessionId, index: i, sha256: chunkSha },
                  },
                };
                for (let p = 0; p < length; p += PIECE)
                  yield { part: { case: "data" as const, value: buffer.subarray(p, Math.min(p + PIECE, length)) } };
              })(),
              { timeoutMs, ...(signal ? { signal } : {}) },
            ),
          );
          sent++;
          options.onProgress?.(length);
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, options.parallel ?? 4) }, worker));
    };
    await send([...todo]);
    for (let round = 1; ; round++) {
      try {
        done = await withRetry(`completing the upload of ${path}`, attempts, signal, () =>
          client.completeUpload({ sessionId: session.sessionId }, { timeoutMs: Math.max(timeoutMs, 600_000) }),
        );
        break;
      } catch (error) {
        // The server no longer counts chunks it took (on S3, a restarted or other replica cannot
        // read back the parts the lost in-order hash had covered): send what it says is missing.
        if (!(error instanceof NearhubError) || error.code !== Code.FailedPrecondition || round > 3) throw error;
        const status = await withRetry(`reading the upload status of ${path}`, attempts, signal, () =>
          client.getUploadStatus({ sessionId: session.sessionId }),
        );
        const have = new Set(status.session?.received ?? []);
        const missing: number[] = [];
        for (let i = 0; i < session.chunkCount; i++) if (!have.has(i)) missing.push(i);
        if (missing.length === 0) throw error;
        await send(missing);
      }
    }
  } finally {
    await file.close();
  }
  return {
    sha256,
    size,
    created: done.created,
    chunksSent: sent,
    chunksSkipped: session.chunkCount - todo.length,
    bytesSkipped,
  };
}

/**
 * sha256 of a file being written in ranges that finish in any order: each range is read back
 * and hashed once it and every range before it are on disk, while later ones still arrive,
 * instead of the whole file after the last one (from the page cache, through one buffer).
 */
class TrailingHash {
  private readonly hash = createHash("sha256");
  private readonly finished = new Set<number>();
  private next = 0;
  private hashed = 0;
  private running: Promise<void> = Promise.resolve();
  private buffer: Buffer | undefined;

  /**
   * `direct`, when given, is the file opened with O_DIRECT: the bytes are read back from the
   * disk into an aligned buffer rather than through the page cache (which, for ranges written
   * with O_DIRECT, would be filled only to be read once).
   */
  constructor(
    private readonly file: FileHandle,
    private readonly size: number,
    private readonly rangeSize: number,
    private direct?: FileHandle,
  ) {}

  /** Range `index` is on disk. */
  finish(index: number): void {
    this.finished.add(index);
    this.running = this.running.then(() => this.advance());
  }

  private async advance(): Promise<void> {
    while (this.finished.has(this.next)) {
      const end = Math.min(this.size, (this.next + 1) * this.rangeSize);
      this.buffer ??= alignedBuffer(4 * 1024 * 1024, false);
      while (this.hashed < end) {
        const want = Math.min(this.buffer.byteLength, end - this.hashed);
        const bytesRead = await this.read(want);
        if (bytesRead === 0) throw new NearhubError(Code.DataLoss, "the download's file is shorter than written");
        this.hash.update(this.buffer.subarray(0, bytesRead));
        this.hashed += bytesRead;
      }
      this.next++;
    }
  }

  /** Reads up to `want` bytes at `hashed` into the buffer: directly when it can, else cached. */
  private async read(want: number): Promise<number> {
    const buffer = this.buffer!;
    if (this.direct && this.hashed % DIRECT_BLOCK === 0) {
      // Whole blocks (a short count at the end of the file); the range's end may be mid-block.
      const blocks = Math.ceil(want / DIRECT_BLOCK) * DIRECT_BLOCK;
      try {
        const { bytesRead } = await this.direct.read(buffer, 0, Math.min(blocks, buffer.byteLength), this.hashed);
        return Math.min(bytesRead, want);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EINVAL") throw error;
        this.direct = undefined;
      }
    }
    return (await this.file.read(buffer, 0, want, this.hashed)).bytesRead;
  }

  /** Resolves when no read is in progress. */
  async settled(): Promise<void> {
    await this.running.catch(() => undefined);
  }

  /** The digest once every range finished; undefined if hashing failed (the caller reads the file). */
  async result(): Promise<{ sha256: string; size: number } | undefined> {
    try {
      await this.running;
    } catch {
      return undefined;
    }
    if (this.hashed !== this.size) return undefined;
    return { sha256: this.hash.digest("hex"), size: this.hashed };
  }
}

/** O_DIRECT's unit: offsets, lengths and memory of direct reads and writes are multiples of it. */
const DIRECT_BLOCK = 4096;
/** Staged bytes written at once with O_DIRECT. */
const DIRECT_WRITE = 4 * 1024 * 1024;

/** `path` opened for O_DIRECT reads and writes; undefined where the platform or filesystem has none. */
async function openDirect(path: string): Promise<FileHandle | undefined> {
  if (constants.O_DIRECT === undefined) return undefined;
  try {
    return await open(path, constants.O_RDWR | constants.O_DIRECT);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EINVAL") return undefined;
    throw error;
  }
}

/**
 * Writes one range's messages at increasing positions. With a direct handle, the bytes are
 * gathered in a page-aligned buffer and written by whole blocks with O_DIRECT, straight from
 * it to the disk: no page-cache pages to find, clear and copy into (for a multi-GB download,
 * most of the CPU its writes cost). The last partial block of the file, or everything when
 * O_DIRECT is refused, goes through the page cache.
 */
class RangeWriter {
  /** The file position of the next byte written. */
  position = 0;
  private staged = 0;
  private buffer: Buffer | undefined;

  constructor(
    private readonly file: FileHandle,
    private direct: FileHandle | undefined,
  ) {}

  /** Begins (or begins again) a range at `offset`. */
  start(offset: number): void {
    this.position = offset;
    this.staged = 0;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (!this.direct || (this.staged === 0 && this.position % DIRECT_BLOCK !== 0)) {
      await writeAll(this.file, bytes, this.position);
      this.position += bytes.byteLength;
      return;
    }
    this.buffer ??= alignedBuffer(DIRECT_WRITE + DIRECT_BLOCK, false);
    for (let from = 0; from < bytes.byteLength;) {
      const n = Math.min(bytes.byteLength - from, this.buffer.byteLength - this.staged);
      this.buffer.set(bytes.subarray(from, from + n), this.staged);
      this.staged += n;
      this.position += n;
      from += n;
      if (this.staged >= DIRECT_WRITE) await this.flush(false);
    }
  }

  /** Writes what is staged: whole blocks directly and, at the end, the rest through the cache. */
  private async flush(last: boolean): Promise<void> {
    const buffer = this.buffer!;
    const start = this.position - this.staged;
    let blocks = this.staged - (this.staged % DIRECT_BLOCK);
    if (blocks > 0 && this.direct) {
      try {
        await writeAll(this.direct, buffer.subarray(0, blocks), start);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EINVAL") throw error;
        this.direct = undefined;
        blocks = 0;
      }
    }
    if (last || !this.direct) {
      await writeAll(this.file, buffer.subarray(blocks, this.staged), start + blocks);
      this.staged = 0;
      return;
    }
    // Less than a block stays staged, moved to the front.
    buffer.copy(buffer, 0, blocks, this.staged);
    this.staged -= blocks;
  }

  /** The range is complete: writes what is still staged. */
  async end(): Promise<void> {
    if (this.staged > 0) await this.flush(true);
  }
}

/** Options of {@link downloadBlob}. */
export interface DownloadOptions {
  /** Bytes per range request; 64 MiB by default. */
  rangeSize?: number;
  parallel?: number;
  onProgress?: (bytes: number) => void;
  signal?: AbortSignal;
  attempts?: number;
  /**
   * Write and read back ranges with O_DIRECT where the filesystem allows it (true by default;
   * used only when `rangeSize` is a multiple of 4096).
   */
  directIo?: boolean;
}

/**
 * Downloads a blob to `dest` in parallel ranges. Bytes go to `dest.nearhub-part` and the
 * finished ranges to `dest.nearhub-part.json`, so a rerun after an interruption fetches only
 * what is missing; the whole file is verified against its sha256 before it is renamed into
 * place (a mismatch deletes it and fails with DATA_LOSS).
 */
export async function downloadBlob(
  client: StorageClient,
  sha256: string,
  size: number,
  dest: string,
  options: DownloadOptions = {},
): Promise<{ rangesFetched: number; rangesSkipped: number }> {
  const part = `${dest}.nearhub-part`;
  const journal = `${part}.json`;
  const rangeSize = options.rangeSize ?? 64 * 1024 * 1024;
  const ranges = Math.max(1, Math.ceil(size / rangeSize));
  let done = new Set<number>();
  try {
    const saved = JSON.parse(await readFile(journal, "utf8")) as {
      sha256: string;
      size: number;
      rangeSize: number;
      done: number[];
    };
    if (
      saved.sha256 === sha256 &&
      saved.size === size &&
      saved.rangeSize === rangeSize &&
      (await stat(part)).size === size
    )
      done = new Set(saved.done);
  } catch {
    // No usable journal: start afresh.
  }
  if (done.size === 0) {
    const f = await open(part, "w");
    await f.truncate(size);
    await f.close();
  }
  const skipped = done.size;
  for (const i of done) options.onProgress?.(Math.min(rangeSize, size - i * rangeSize));
  const todo = [...Array(ranges).keys()].filter((i) => !done.has(i));
  const file = await open(part, "r+");
  // Ranges of whole blocks are written (and read back) with O_DIRECT where the filesystem allows.
  const direct = options.directIo !== false && rangeSize % DIRECT_BLOCK === 0 ? await openDirect(part) : undefined;
  // The whole file is verified while it downloads, each range once it and those before it are in.
  const trailing = new TrailingHash(file, size, rangeSize, direct);
  for (const i of done) trailing.finish(i);
  let fetched = 0;
  let verified: { sha256: string; size: number } | undefined;
  let saving = Promise.resolve();
  const save = () => {
    saving = saving.then(() =>
      writeFile(journal, JSON.stringify({ sha256, size, rangeSize, done: [...done] })).catch(() => undefined),
    );
    return saving;
  };
  try {
    const worker = async () => {
      const writer = new RangeWriter(file, direct);
      for (let i = todo.shift(); i !== undefined; i = todo.shift()) {
        const offset = i * rangeSize;
        const length = Math.min(rangeSize, size - offset);
        if (length === 0) continue;
        await withRetry(
          `downloading bytes ${offset}-${offset + length - 1} of ${sha256}`,
          options.attempts ?? 6,
          options.signal,
          async () => {
            writer.start(offset);
            for await (const m of client.getBlob(
              { sha256, offset: BigInt(offset), length: BigInt(length) },
              options.signal ? { signal: options.signal } : {},
            )) {
              if (writer.position + m.chunk.byteLength > offset + length)
                throw new NearhubError(Code.DataLoss, `the server sent more than the ${length} bytes asked for`);
              await writer.write(m.chunk);
            }
            await writer.end();
            if (writer.position !== offset + length)
              throw new NearhubError(
                Code.Unavailable,
                `the stream ended after ${writer.position - offset} of ${length} bytes`,
              );
          },
        );
        await file.datasync();
        trailing.finish(i);
        done.add(i);
        fetched++;
        options.onProgress?.(length);
        await save();
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, options.parallel ?? 4) }, worker));
    verified = await trailing.result();
  } finally {
    await trailing.settled();
    await file.close();
    await direct?.close();
    await saving;
  }
  const actual = verified ?? (await hashFile(part));
  if (actual.sha256 !== sha256 || actual.size !== size) {
    await rm(part, { force: true });
    await rm(journal, { force: true });
    throw new NearhubError(
      Code.DataLoss,
      `downloaded ${dest} hashes to ${actual.sha256}, not ${sha256}; deleted, run again`,
    );
  }
  await rename(part, dest);
  await rm(journal, { force: true });
  return { rangesFetched: fetched, rangesSkipped: skipped };
}
