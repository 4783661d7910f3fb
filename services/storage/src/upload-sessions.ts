import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { KV } from "@nats-io/kv";
import { Code, NearhubError, type Logger } from "@nearhub/platform";
import type { UploadSessionSchema } from "@nearhub/proto/storage";
import { Counter, type Registry as PromRegistry } from "prom-client";
import { SHA256, type BlobStore, type ChunkPart, type ChunkedHandle } from "./blob-store.js";
import { HashWorker, sharedBuffer } from "./hash-worker.js";

export const MIB = 1024 * 1024;
/** The default chunk size. */
export const DEFAULT_CHUNK = 64 * MIB;
/** S3's smallest part (except the last). */
export const MIN_CHUNK = 5 * MIB;
export const MAX_CHUNK_SIZE = 512 * MIB;
/** S3's most parts per upload. */
const MAX_CHUNKS = 10_000;
/** Chunk bytes held in memory at once across all UploadChunk calls of this process. */
const DEFAULT_MEMORY_BUDGET = 1024 * MIB;
/**
 * Stored chunks kept in memory, per process, while waiting for an earlier chunk of their session
 * so the whole-blob hash can take them in order (parallel clients finish chunks out of order).
 */
const DEFAULT_HASH_AHEAD = 256 * MIB;
/** Idle chunk buffers kept for reuse (four of 64 MiB). */
const POOL_IDLE_BYTES = 257 * MIB;
const POOL_IDLE_MS = 10_000;
/** Received chunk bytes handed to the hash worker at once. */
const HASH_STEP = 16 * MIB;
/**
 * Stored chunks of a direct session (see {@link SessionRecord.hasher}) that its in-order hash
 * holds back unhashed, so a chunk stored again with other bytes soon after (a client that
 * resends a chunk) replaces them instead of spoiling the only way to verify the session.
 */
const DIRECT_LAG = 64 * MIB;

/** `s.<id>` in the `upload-sessions` bucket. */
interface SessionRecord {
  id: string;
  sha256: string;
  size: number;
  chunkSize: number;
  chunkCount: number;
  handle: ChunkedHandle;
  createdAt: number;
  /**
   * Set while the session uploads straight to the blob's key ({@link BlobStore.beginDirect}):
   * the id of the process (an {@link UploadSessions}) whose in-order hash of the chunks is the
   * only way to verify them, since the backend cannot read them back before they are visible.
   * Any other process that takes the session over (a restart, another replica) first turns it
   * into a read-back session (see `demote`).
   */
  hasher?: string;
  /** Set once CompleteUpload succeeded; the record stays until expiry so a retry is answered. */
  completed?: { created: boolean };
}

/** `c.<id>.<index>`: a chunk that is durably stored. */
interface ChunkRecord {
  sha256: string;
  size: number;
  etag: string;
  at: number;
  /** The backend upload (`handle.uploadId`) it went to; a chunk of an upload the session left does not count. */
  upload?: string;
}

const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function isCasConflict(error: unknown): boolean {
  const e = error as { code?: unknown; message?: string };
  return e?.code === 10071 || /wrong last sequence|key exists/i.test(e?.message ?? "");
}

/** Options of {@link UploadSessions}. */
export interface UploadSessionsOptions {
  /** Idle time after which a session and its parts are removed. */
  ttlMs: number;
  logger: Logger;
  /** Chunk bytes buffered at once in this process (1 GiB by default); more is RESOURCE_EXHAUSTED. */
  memoryBudget?: number;
  /** Stored chunks held for the in-order whole-blob hash (256 MiB by default; 0 turns it off). */
  hashAheadBytes?: number;
  registry?: PromRegistry;
}

/**
 * Chunk buffers for reuse: a fresh 64 MiB allocation per chunk costs page faults and garbage
 * collection on every chunk. Idle buffers beyond {@link POOL_IDLE_BYTES}, or idle for
 * {@link POOL_IDLE_MS}, are let go.
 *
 * The buffers are shared memory (the hash worker reads them in place) and start on a page
 * boundary, so the folder backend can write a chunk straight from them to disk (O_DIRECT)
 * rather than copy it into the page cache. The price: V8 copies into shared memory with relaxed
 * atomics, byte by byte when source and target are not at the same offset modulo 8 (gRPC's
 * pieces are not), about 0.3 s of CPU per GiB; the page-cache copy that O_DIRECT saves cost
 * 2 to 3 s per GiB when the kernel has to find fresh pages for it (measured on the storage bench).
 */
class BufferPool {
  private free: SharedArrayBuffer[] = [];
  private timer: NodeJS.Timeout | undefined;

  /** A buffer of exactly `size` bytes at the start of its (page-aligned) memory. */
  take(size: number): Buffer {
    const i = this.free.findIndex((b) => b.byteLength >= size && b.byteLength <= 2 * size);
    const whole = i < 0 ? sharedBuffer(size).buffer : this.free.splice(i, 1)[0]!;
    return Buffer.from(whole, 0, size);
  }

  give(view: Buffer): void {
    if (view.byteLength < MIB || !(view.buffer instanceof SharedArrayBuffer)) return;
    const whole = view.buffer;
    let idle = whole.byteLength;
    for (const b of this.free) idle += b.byteLength;
    if (idle > POOL_IDLE_BYTES || this.free.includes(whole)) return;
    this.free.push(whole);
    this.timer?.refresh();
    this.timer ??= setTimeout(() => {
      this.free = [];
      this.timer = undefined;
    }, POOL_IDLE_MS).unref();
  }
}

/**
 * The sha256 of a session's blob, fed with each chunk's verified bytes in index order as the
 * chunks are stored, so completion need not read the blob back. Chunks stored ahead of the
 * next one wait in memory (bounded); a session whose chunks came partly through another
 * process (or before a restart) has none, and completion reads the blob back (or, for a direct
 * session, which cannot be read back, the session is moved to an upload that can be).
 */
interface WholeHash {
  /** Its key on the hash worker. */
  key: string;
  /** Bytes of this session in `ahead` (stored, not hashed yet). */
  pendingBytes: number;
  /** The worker thread holding it; `lost` once a chunk went to another (the first one died). */
  generation: number;
  lost?: boolean;
  /** The next chunk index the hash takes. */
  next: number;
  /** Per hashed chunk, the digest and etag it was stored with (checked against the KV at completion). */
  hashed: Array<{ sha256: string; etag: string }>;
  /** Stored chunks not hashed yet: ahead of `next`, or (direct sessions) held back from `next` on. */
  ahead: Map<number, { bytes: Buffer; sha256: string; etag: string }>;
  /** When a chunk was last fed (a session completed by another replica is forgotten after the TTL). */
  touched: number;
}

/**
 * Resumable chunked uploads. All state is in the `upload-sessions` KV bucket: the session
 * (`s.<id>`, with the backend handle), one key per stored chunk (`c.<id>.<index>`, written
 * only after the chunk is durable, so no two writers contend on one key) and an index from
 * blob to open session (`h.<sha256>.<size>`, created with compare-and-set, so concurrent
 * uploads of one blob share one session and produce one object).
 *
 * Two kinds of session, by what can verify the whole sha256 before the blob becomes visible:
 * - direct (S3; {@link BlobStore.beginDirect}): the chunks are parts of a multipart upload of
 *   the blob's own key, so completion costs no copy; but S3 cannot read unfinished parts back,
 *   so the in-order hash in the process that started the session (its `hasher`) is the only
 *   thing that can verify them. A SHA-256 state cannot be saved and moved with node's crypto
 *   (a JavaScript or WebAssembly one could, without the CPU's SHA instructions), so when
 *   that hash is gone (the process restarted, another replica took the session, a hashed chunk
 *   was replaced) the session is moved to a read-back upload and the chunks stored until then
 *   are sent again; completion never makes unverified parts visible.
 * - read-back ({@link BlobStore.beginChunked}; the folder backend, and S3 sessions moved as
 *   above): completion uses the in-order hash when this process has it, and otherwise reads the
 *   assembled blob back before publishing it, so chunks may arrive through any process.
 */
export class UploadSessions {
  readonly chunks: Counter<"result">;
  readonly bytes: Counter;
  readonly sessions: Counter<"outcome">;
  private buffered = 0;
  private readonly pool = new BufferPool();
  /** In-order whole-blob hashes by session id; `null` once a session cannot have one. */
  private readonly wholeHashes = new Map<string, WholeHash | null>();
  private aheadBytes = 0;
  private readonly hasher = new HashWorker();
  private hashKeys = 0;
  /** Chunk writes and completions in progress in this process, by key (see `exclusive`). */
  private readonly writing = new Map<string, Promise<void>>();
  /** This process, as the `hasher` of the direct sessions it started. */
  private readonly instance = randomUUID();

  constructor(
    private readonly kv: KV,
    private readonly store: BlobStore,
    private readonly options: UploadSessionsOptions,
  ) {
    const registers = options.registry ? [options.registry] : [];
    this.chunks = new Counter({
      name: "nearhub_storage_upload_chunks_total",
      help: "UploadChunk calls by result (stored, duplicate, rejected)",
      labelNames: ["result"],
      registers,
    });
    this.bytes = new Counter({
      name: "nearhub_storage_upload_chunk_bytes_total",
      help: "Bytes of chunks stored by resumable uploads",
      registers,
    });
    this.sessions = new Counter({
      name: "nearhub_storage_upload_sessions_total",
      help: "Upload sessions by outcome (started, resumed, completed, aborted, expired, failed)",
      labelNames: ["outcome"],
      registers,
    });
  }

  private async read(id: string): Promise<{ record: SessionRecord; revision: number } | undefined> {
    const entry = await this.kv.get(`s.${id}`);
    if (!entry || entry.operation !== "PUT") return undefined;
    return { record: entry.json<SessionRecord>(), revision: entry.revision };
  }

  /** The session or NOT_FOUND with what to do. */
  async get(id: string): Promise<SessionRecord> {
    if (!SESSION_ID.test(id)) {
      throw new NearhubError(
        Code.InvalidArgument,
        `session_id ${JSON.stringify(id.slice(0, 80))} is not an upload session id (a UUID from StartUpload)`,
      );
    }
    const found = await this.read(id);
    if (!found) {
      throw new NearhubError(
        Code.NotFound,
        `upload session ${id} does not exist (never started, aborted, or expired); call StartUpload again`,
      );
    }
    return found.record;
  }

  /** Stored chunks by index (of the session's current backend upload). */
  async received(record: SessionRecord): Promise<Map<number, ChunkRecord>> {
    const id = record.id;
    const upload = record.handle["uploadId"];
    const out = new Map<number, ChunkRecord>();
    const keys: string[] = [];
    for await (const k of await this.kv.keys(`c.${id}.*`)) keys.push(k);
    await Promise.all(
      keys.map(async (k) => {
        const entry = await this.kv.get(k);
        if (entry?.operation !== "PUT") return;
        const chunk = entry.json<ChunkRecord>();
        if (chunk.upload === undefined || chunk.upload === upload) out.set(Number(k.split(".")[2]), chunk);
      }),
    );
    return out;
  }

  async describe(
    record: SessionRecord,
    received?: Map<number, ChunkRecord>,
  ): Promise<MessageInitShape<typeof UploadSessionSchema>> {
    const chunks = received ?? (await this.received(record));
    const lastActivity = Math.max(record.createdAt, ...[...chunks.values()].map((c) => c.at));
    return {
      sessionId: record.id,
      sha256: record.sha256,
      size: BigInt(record.size),
      chunkSize: BigInt(record.chunkSize),
      chunkCount: record.chunkCount,
      received: [...chunks.keys()].sort((a, b) => a - b),
      createdAt: timestampFromMs(record.createdAt),
      expiresAt: timestampFromMs(lastActivity + this.options.ttlMs),
    };
  }

  /** Opens a session, or returns the open one for the same blob; undefined when the blob is stored. */
  async start(
    sha256: string,
    size: number,
    requestedChunk: number,
  ): Promise<{ record?: SessionRecord; resumed: boolean }> {
    if (!SHA256.test(sha256)) {
      throw new NearhubError(
        Code.InvalidArgument,
        `${JSON.stringify(sha256.slice(0, 80))} is not a sha256: expected 64 lower-case hex characters`,
      );
    }
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new NearhubError(
        Code.InvalidArgument,
        `size ${size} must be at least 1 byte (send empty blobs with PutBlob)`,
      );
    }
    const chunkSize = requestedChunk === 0 ? DEFAULT_CHUNK : requestedChunk;
    if (!Number.isSafeInteger(chunkSize) || chunkSize < MIN_CHUNK || chunkSize > MAX_CHUNK_SIZE) {
      throw new NearhubError(
        Code.InvalidArgument,
        `chunk_size ${requestedChunk} must be between ${MIN_CHUNK} (5 MiB) and ${MAX_CHUNK_SIZE} (512 MiB), or 0 for 64 MiB`,
      );
    }
    const chunkCount = Math.ceil(size / chunkSize);
    if (chunkCount > MAX_CHUNKS) {
      throw new NearhubError(
        Code.InvalidArgument,
        `${size} bytes in chunks of ${chunkSize} make ${chunkCount} chunks; at most ${MAX_CHUNKS}: use a chunk_size of at least ${Math.ceil(size / MAX_CHUNKS)}`,
      );
    }
    if (await this.store.stat(sha256)) return { resumed: false };
    const indexKey = `h.${sha256}.${size}`;
    for (let attempt = 0; attempt < 5; attempt++) {
      const existing = await this.kv.get(indexKey);
      if (existing && existing.operation === "PUT") {
        const found = await this.read(existing.string());
        if (found && !found.record.completed) {
          this.sessions.inc({ outcome: "resumed" });
          // Resumed through another process: the status must list only chunks that can still count.
          return { record: await this.takeOver(found.record), resumed: true };
        }
        // The index outlived its session (a crash between steps): replace it.
        await this.kv.delete(indexKey, { previousSeq: existing.revision }).catch(() => undefined);
        continue;
      }
      const id = randomUUID();
      const direct = this.store.beginDirect !== undefined && (this.options.hashAheadBytes ?? DEFAULT_HASH_AHEAD) > 0;
      const handle = direct
        ? await this.store.beginDirect!(id, { sha256, size })
        : await this.store.beginChunked(id, size);
      const record: SessionRecord = { id, sha256, size, chunkSize, chunkCount, handle, createdAt: Date.now() };
      if (direct) record.hasher = this.instance;
      await this.kv.put(`s.${id}`, JSON.stringify(record));
      try {
        if (existing) await this.kv.update(indexKey, id, existing.revision);
        else await this.kv.create(indexKey, id);
      } catch (error) {
        // Another client started the same blob at the same moment: use its session.
        await this.discard(record);
        if (!isCasConflict(error)) throw error;
        continue;
      }
      this.sessions.inc({ outcome: "started" });
      return { record, resumed: false };
    }
    throw new NearhubError(Code.Aborted, `could not open an upload session for ${sha256}; retry`);
  }

  /**
   * Stores chunk `index` from `pieces` after checking its size and sha256. A chunk already
   * stored with the same sha256 is acknowledged, its bytes read and discarded.
   */
  async putChunk(
    id: string,
    index: number,
    chunkSha256: string,
    pieces: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
  ): Promise<{ stored: boolean; receivedCount: number }> {
    const record = await this.get(id);
    if (!Number.isInteger(index) || index < 0 || index >= record.chunkCount) {
      this.chunks.inc({ result: "rejected" });
      throw new NearhubError(
        Code.OutOfRange,
        `chunk index ${index} is out of range: session ${id} has chunks 0..${record.chunkCount - 1}`,
      );
    }
    if (!SHA256.test(chunkSha256)) {
      this.chunks.inc({ result: "rejected" });
      throw new NearhubError(
        Code.InvalidArgument,
        `chunk sha256 ${JSON.stringify(chunkSha256.slice(0, 80))} must be 64 lower-case hex characters`,
      );
    }
    // Clients sharing a session may send the same chunk at once. Let one write it and the
    // others find it stored: an overwrite racing the completion could hand S3 (or s3rver,
    // which does not replace parts atomically) a part that is half rewritten.
    // Read the session again inside: a writer we waited for may have completed it.
    return this.exclusive(`chunk.${id}.${index}`, async () =>
      this.putChunkAlone(await this.takeOver(await this.get(id)), index, chunkSha256, pieces, signal),
    );
  }

  /**
   * Runs `fn` after any other run with the same key in this process has finished: one writer
   * per chunk, one completer per session.
   */
  private async exclusive<T>(key: string, fn: () => Promise<T>): Promise<T> {
    for (let busy = this.writing.get(key); busy; busy = this.writing.get(key)) await busy;
    let release: () => void = () => undefined;
    this.writing.set(key, new Promise<void>((resolve) => (release = resolve)));
    try {
      return await fn();
    } finally {
      this.writing.delete(key);
      release();
    }
  }

  private async putChunkAlone(
    taken: SessionRecord,
    index: number,
    chunkSha256: string,
    pieces: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
  ): Promise<{ stored: boolean; receivedCount: number }> {
    let record = taken;
    const id = record.id;
    const expected = Math.min(record.chunkSize, record.size - index * record.chunkSize);
    const prior = await this.kv.get(`c.${id}.${index}`);
    // Another client sharing the session may have completed it: every chunk is in.
    const duplicate =
      record.completed !== undefined ||
      (prior?.operation === "PUT" && prior.json<ChunkRecord>().sha256 === chunkSha256);
    if (!duplicate && record.hasher !== undefined) record = await this.admitDirect(record, index, expected);
    const budget = this.options.memoryBudget ?? DEFAULT_MEMORY_BUDGET;
    if (!duplicate && this.buffered + expected > budget) {
      this.chunks.inc({ result: "rejected" });
      throw new NearhubError(
        Code.ResourceExhausted,
        `storage is holding ${this.buffered} bytes of chunks in flight (limit ${budget}); retry this chunk shortly or send fewer in parallel`,
      );
    }
    if (!duplicate) this.buffered += expected;
    try {
      return await this.receive(record, index, chunkSha256, expected, duplicate, pieces, signal);
    } finally {
      if (!duplicate) this.buffered -= expected;
    }
  }

  private async receive(
    record: SessionRecord,
    index: number,
    chunkSha256: string,
    expected: number,
    duplicate: boolean,
    pieces: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
  ): Promise<{ stored: boolean; receivedCount: number }> {
    // Hashed on the worker as the pieces land (under `key`), while this thread takes the next.
    const key = `chunk.${this.hashKeys++}`;
    // kept: the whole-blob hash holds the buffer; digested: the worker let go of `key`. The
    // buffer is taken when the first piece arrives.
    const state: { kept: boolean; digested: boolean; buffer?: Buffer } = { kept: false, digested: false };
    try {
      return await this.fill(record, index, chunkSha256, expected, duplicate, pieces, signal, key, state);
    } finally {
      if (!state.digested) this.hasher.drop(key);
      if (state.buffer && !state.kept) this.pool.give(state.buffer);
    }
  }

  private async fill(
    record: SessionRecord,
    index: number,
    chunkSha256: string,
    expected: number,
    duplicate: boolean,
    pieces: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
    key: string,
    state: { kept: boolean; digested: boolean; buffer?: Buffer },
  ): Promise<{ stored: boolean; receivedCount: number }> {
    const id = record.id;
    const offset = index * record.chunkSize;
    let received = 0;
    let posted = 0;
    let buffer: Buffer | undefined;
    for await (const piece of pieces) {
      signal.throwIfAborted();
      if (received + piece.byteLength > expected) {
        this.chunks.inc({ result: "rejected" });
        throw new NearhubError(
          Code.InvalidArgument,
          `chunk ${index} is larger than its ${expected} bytes (chunk_size ${record.chunkSize}, blob size ${record.size}); nothing was stored`,
        );
      }
      if (!duplicate) {
        buffer ??= state.buffer = this.pool.take(expected);
        buffer.set(piece, received);
      }
      received += piece.byteLength;
      // To the worker in steps of HASH_STEP: each message costs this thread a wake-up of it.
      if (buffer && received - posted >= HASH_STEP) {
        this.hasher.update(key, buffer.subarray(posted, received));
        posted = received;
      }
    }
    if (received !== expected) {
      this.chunks.inc({ result: "rejected" });
      throw new NearhubError(
        Code.InvalidArgument,
        `chunk ${index} has ${received} bytes but must have ${expected}; nothing was stored`,
      );
    }
    // (No buffer and not a duplicate would be an empty chunk, which sizes of at least 1 rule out.)
    if (duplicate || !buffer) {
      this.chunks.inc({ result: "duplicate" });
      return {
        stored: false,
        receivedCount: record.completed ? record.chunkCount : (await this.received(record)).size,
      };
    }
    if (received > posted) this.hasher.update(key, buffer.subarray(posted, received));
    const actual = await this.hasher.digest(key);
    state.digested = true;
    if (actual !== chunkSha256) {
      this.chunks.inc({ result: "rejected" });
      throw new NearhubError(
        Code.DataLoss,
        `chunk ${index} hashes to ${actual}, not the declared ${chunkSha256}: it was corrupted in transit; resend it`,
      );
    }
    let etag: string;
    for (;;) {
      try {
        ({ etag } = await this.store.writeChunk(record.handle, index, offset, buffer, actual));
      } catch (error) {
        if (NearhubError.from(error).code !== Code.NotFound) throw error;
        // Another client sharing the session completed it while this chunk was in flight.
        if (await this.store.stat(record.sha256)) {
          this.chunks.inc({ result: "duplicate" });
          return { stored: false, receivedCount: record.chunkCount };
        }
        // Another process moved the session to a read-back upload and aborted the old one.
        const current = (await this.read(id))?.record;
        if (!current || current.handle["uploadId"] === record.handle["uploadId"]) throw error;
        record = current;
        continue;
      }
      const chunk: ChunkRecord = {
        sha256: actual,
        size: expected,
        etag,
        at: Date.now(),
        ...(record.handle["uploadId"] !== undefined ? { upload: record.handle["uploadId"] } : {}),
      };
      await this.kv.put(`c.${id}.${index}`, JSON.stringify(chunk));
      if (record.hasher === undefined) break;
      // A direct session may have been moved to a read-back upload (see `demote`) while this
      // chunk went to the old one, where it no longer counts: its bytes are still here, so
      // store it again in the new one rather than have the client send it again.
      const current = (await this.read(id))?.record;
      if (!current || current.completed || current.handle["uploadId"] === record.handle["uploadId"]) break;
      record = current;
    }
    state.kept = this.feedWholeHash(record, index, buffer, actual, etag);
    this.chunks.inc({ result: "stored" });
    this.bytes.inc(expected);
    return { stored: true, receivedCount: (await this.received(record)).size };
  }

  /**
   * Feeds a stored chunk to its session's in-order whole-blob hash; true when the hash took
   * `bytes` (kept for later, or being hashed): it returns them to the pool itself. A direct
   * session's hash holds up to {@link DIRECT_LAG} of in-order chunks back unhashed.
   */
  private feedWholeHash(record: SessionRecord, index: number, bytes: Buffer, sha256: string, etag: string): boolean {
    const limit = this.options.hashAheadBytes ?? DEFAULT_HASH_AHEAD;
    let whole = this.wholeHashes.get(record.id);
    if (whole === null || limit <= 0) return false;
    if (whole === undefined) {
      whole = {
        key: `whole.${record.id}`,
        generation: 0,
        next: 0,
        hashed: [],
        ahead: new Map(),
        pendingBytes: 0,
        touched: 0,
      };
      this.wholeHashes.set(record.id, whole);
    }
    whole.touched = Date.now();
    if (index < whole.next) {
      // Stored again: the same bytes leave the hash valid, other bytes spoil it.
      if (whole.hashed[index]?.sha256 !== sha256 || whole.hashed[index]?.etag !== etag) this.dropWholeHash(record.id);
      return false;
    }
    const replaced = whole.ahead.get(index);
    if (replaced) {
      whole.ahead.delete(index);
      whole.pendingBytes -= replaced.bytes.byteLength;
      this.aheadBytes -= replaced.bytes.byteLength;
      this.pool.give(replaced.bytes);
    }
    if (index > whole.next && this.aheadBytes + bytes.byteLength > limit) {
      // Make room by hashing what is held back, if that is enough.
      this.flushWholeHash(whole, 0);
      // A direct session's chunks were admitted against the limit before they were received
      // (admitDirect); the ones received meanwhile may overshoot it a little.
      if (this.aheadBytes + bytes.byteLength > limit && record.hasher === undefined) {
        // Too far ahead (or the earlier chunks were stored elsewhere): completion reads back.
        this.dropWholeHash(record.id);
        return false;
      }
    }
    whole.ahead.set(index, { bytes, sha256, etag });
    whole.pendingBytes += bytes.byteLength;
    this.aheadBytes += bytes.byteLength;
    this.flushWholeHash(whole, record.hasher !== undefined ? DIRECT_LAG : 0);
    return true;
  }

  /**
   * Hands the chunks waiting in order from `next` to the worker while more than `keep` bytes
   * of the session wait; their buffers go back to the pool once hashed.
   */
  private flushWholeHash(whole: WholeHash, keep: number): void {
    const hashing: Buffer[] = [];
    for (
      let next = whole.ahead.get(whole.next);
      next && whole.pendingBytes > keep;
      next = whole.ahead.get(whole.next)
    ) {
      whole.ahead.delete(whole.next);
      whole.pendingBytes -= next.bytes.byteLength;
      this.aheadBytes -= next.bytes.byteLength;
      const generation = this.hasher.update(whole.key, next.bytes);
      if (whole.next === 0) whole.generation = generation;
      else if (generation !== whole.generation) whole.lost = true;
      whole.hashed[whole.next] = { sha256: next.sha256, etag: next.etag };
      whole.next++;
      hashing.push(next.bytes);
    }
    if (hashing.length === 0) return;
    this.hasher.settled().then(
      () => hashing.forEach((b) => this.pool.give(b)),
      () => undefined,
    );
  }

  /**
   * Checks, before a chunk of a direct session is received, that its in-order hash can take
   * it. A chunk too far ahead while the chunk the hash needs next is on its way is refused with
   * RESOURCE_EXHAUSTED (the client retries it shortly: with 64 MiB chunks the default limit
   * lets four wait behind a slow one). One the hash can no longer take (a chunk hashed already,
   * sent again with other bytes; the hash lost with its worker thread; or too far ahead with
   * nothing on its way to catch up, as from a client that sends chunks backwards) first turns
   * the session into a read-back one, the only way left to verify it.
   */
  private async admitDirect(record: SessionRecord, index: number, size: number): Promise<SessionRecord> {
    const whole = this.wholeHashes.get(record.id);
    const next = whole?.next ?? 0;
    if (whole === null || whole?.lost || index < next) {
      return this.demote(record, `chunk ${index} arrived when its in-order hash could no longer take it`);
    }
    if (index === next || !whole) return record;
    const limit = this.options.hashAheadBytes ?? DEFAULT_HASH_AHEAD;
    // Bytes held back in order from `next` can be hashed to make room.
    let flushable = 0;
    for (let i = next, c = whole.ahead.get(i); c; c = whole.ahead.get(++i)) flushable += c.bytes.byteLength;
    const replaced = whole.ahead.get(index)?.bytes.byteLength ?? 0;
    if (this.aheadBytes - flushable - replaced + size > limit) {
      if (!this.writing.has(`chunk.${record.id}.${next}`)) {
        return this.demote(record, `chunk ${index} arrived too far ahead of chunk ${next}, which is not on its way`);
      }
      this.chunks.inc({ result: "rejected" });
      throw new NearhubError(
        Code.ResourceExhausted,
        `chunk ${index} of upload session ${record.id} is too far ahead of chunk ${next}, which the blob's hash takes next (${this.aheadBytes} bytes wait for earlier chunks, limit ${limit}); send chunk ${next} first, or retry this one shortly`,
      );
    }
    return record;
  }

  /**
   * A direct session used by a process other than its hasher (this one restarted, or another
   * replica took a chunk) can no longer be verified in order: makes it a read-back one first.
   */
  private async takeOver(record: SessionRecord): Promise<SessionRecord> {
    if (record.hasher === undefined || record.hasher === this.instance || record.completed) return record;
    return this.demote(record, "another storage process (a restart, or another replica) took the session over");
  }

  /**
   * Moves a direct session to a new backend upload that completion verifies by reading it back
   * ({@link BlobStore.beginChunked}). The chunks stored so far are in the direct upload, whose
   * parts nothing can read before they become visible, and whose in-order hash is gone: they no
   * longer count and must be sent again (GetUploadStatus and a resumed StartUpload list them as
   * missing). Their upload is aborted (best effort). Chunks stored after the move are verified
   * by reading the assembled object back, as on any read-back session, so nothing unverified
   * becomes visible in either case.
   */
  private async demote(record: SessionRecord, why: string): Promise<SessionRecord> {
    const found = await this.read(record.id);
    if (!found) return this.get(record.id);
    const current = found.record;
    if (current.hasher === undefined || current.completed) return current;
    const handle = await this.store.beginChunked(current.id, current.size);
    const moved: SessionRecord = { ...current, handle };
    delete moved.hasher;
    try {
      await this.kv.update(`s.${current.id}`, JSON.stringify(moved), found.revision);
    } catch (error) {
      await this.store.abortChunked(handle);
      if (!isCasConflict(error)) throw error;
      // Another process moved (or completed) it at the same moment: use its record.
      return this.get(current.id);
    }
    const stale = (await this.rawChunkKeys(current.id)).length;
    this.options.logger.warn(
      "upload session switched to verification by reading back; chunks stored before must be sent again",
      {
        session: current.id,
        reason: why,
        chunks_to_resend: stale,
      },
    );
    this.dropWholeHash(current.id, true);
    await this.store.abortChunked(current.handle);
    for (const k of await this.rawChunkKeys(current.id)) {
      const entry = await this.kv.get(k);
      if (entry?.operation === "PUT" && entry.json<ChunkRecord>().upload !== handle["uploadId"]) {
        await this.kv.delete(k, { previousSeq: entry.revision }).catch(() => undefined);
      }
    }
    return moved;
  }

  private async rawChunkKeys(id: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const k of await this.kv.keys(`c.${id}.*`)) keys.push(k);
    return keys;
  }

  /** Forgets a session's whole-blob hash; `forever` when the session is gone. */
  private dropWholeHash(id: string, forever = false): void {
    const whole = this.wholeHashes.get(id);
    if (whole) {
      this.hasher.drop(whole.key);
      for (const { bytes } of whole.ahead.values()) {
        this.aheadBytes -= bytes.byteLength;
        this.pool.give(bytes);
      }
    }
    if (forever) this.wholeHashes.delete(id);
    else this.wholeHashes.set(id, null);
  }

  /**
   * The sha256 of all of a session's chunks when this process hashed every one of them, in
   * order, with exactly the digests and etags the KV records: the bytes the backend assembles.
   */
  private async receivedDigest(record: SessionRecord, chunks: Map<number, ChunkRecord>): Promise<string | undefined> {
    const whole = this.wholeHashes.get(record.id);
    if (whole) this.flushWholeHash(whole, 0);
    if (!whole || whole.lost || whole.next !== record.chunkCount) return undefined;
    for (let i = 0; i < record.chunkCount; i++) {
      const c = chunks.get(i);
      if (!c || c.sha256 !== whole.hashed[i]?.sha256 || c.etag !== whole.hashed[i]?.etag) return undefined;
    }
    try {
      // A peek leaves the hash for a retried completion.
      const digest = await this.hasher.peek(whole.key);
      // The thread that hashed the chunks must be the one that answered.
      return this.hasher.current === whole.generation ? digest : undefined;
    } catch {
      return undefined;
    }
  }

  /** Verifies and commits; answers a repeated call on a completed session from its record. */
  async complete(id: string): Promise<{ record: SessionRecord; created: boolean }> {
    // Clients sharing a session may complete it at once; the second finds it completed.
    return this.exclusive(`complete.${id}`, () => this.completeAlone(id));
  }

  private async completeAlone(id: string): Promise<{ record: SessionRecord; created: boolean }> {
    await this.takeOver(await this.get(id));
    const found = await this.read(id);
    if (!found) throw new NearhubError(Code.NotFound, `upload session ${id} does not exist`);
    let { record } = found;
    if (record.completed) return { record, created: false };
    let chunks = await this.received(record);
    const missing: number[] = [];
    for (let i = 0; i < record.chunkCount; i++) if (!chunks.has(i)) missing.push(i);
    if (missing.length > 0) {
      throw new NearhubError(
        Code.FailedPrecondition,
        `upload session ${id} is missing ${missing.length} of ${record.chunkCount} chunks (${missing.slice(0, 20).join(", ")}${missing.length > 20 ? ", …" : ""}); upload them, then complete`,
      );
    }
    const digest = await this.receivedDigest(record, chunks);
    if (record.hasher !== undefined && digest === undefined) {
      // The in-order hash is gone (its worker thread died, a chunk was replaced after it was
      // hashed): nothing can verify the direct upload's parts.
      record = await this.demote(record, "the in-order hash of its chunks was lost before completion");
      chunks = await this.received(record);
      throw new NearhubError(
        Code.FailedPrecondition,
        `upload session ${id} could not be verified: the hash of its chunks in order was lost, and S3 cannot read back the parts of an unfinished upload; send its ${record.chunkCount - chunks.size} chunks again (GetUploadStatus lists the stored ones), then complete`,
      );
    }
    const parts: ChunkPart[] = [...chunks.entries()].map(([index, c]) => ({ index, etag: c.etag, size: c.size }));
    let created: boolean;
    try {
      ({ created } = await this.store.completeChunked(
        record.handle,
        { sha256: record.sha256, size: record.size },
        parts,
        ...(digest !== undefined ? [{ sha256: digest }] : []),
      ));
    } catch (error) {
      const e = NearhubError.from(error);
      if (e.code === Code.InvalidArgument) {
        // The declared sha256 cannot be met by these chunks: the session is useless.
        await this.discard(record);
        this.sessions.inc({ outcome: "failed" });
      }
      throw e;
    }
    await this.kv
      .update(`s.${id}`, JSON.stringify({ ...record, completed: { created } }), found.revision)
      .catch(() => undefined);
    await this.dropChunksAndIndex(record);
    this.dropWholeHash(id, true);
    this.sessions.inc({ outcome: "completed" });
    return { record, created };
  }

  async abort(id: string): Promise<boolean> {
    if (!SESSION_ID.test(id)) await this.get(id);
    const found = await this.read(id);
    if (!found) return false;
    await this.discard(found.record);
    this.sessions.inc({ outcome: "aborted" });
    return true;
  }

  private async dropChunksAndIndex(record: SessionRecord): Promise<void> {
    const keys: string[] = [];
    for await (const k of await this.kv.keys(`c.${record.id}.*`)) keys.push(k);
    for (const k of keys) await this.kv.purge(k);
    const index = await this.kv.get(`h.${record.sha256}.${record.size}`);
    if (index?.operation === "PUT" && index.string() === record.id) {
      await this.kv.purge(`h.${record.sha256}.${record.size}`).catch(() => undefined);
    }
  }

  /** Removes the session, its chunks and its backend parts (best effort). */
  private async discard(record: SessionRecord): Promise<void> {
    this.dropWholeHash(record.id, true);
    if (!record.completed) await this.store.abortChunked(record.handle);
    await this.dropChunksAndIndex(record);
    await this.kv.purge(`s.${record.id}`);
  }

  /** Removes sessions idle for longer than the TTL; returns how many. */
  async sweep(now = Date.now()): Promise<number> {
    for (const [id, whole] of this.wholeHashes) {
      if (!whole || now - whole.touched >= this.options.ttlMs) this.dropWholeHash(id, true);
    }
    const ids: string[] = [];
    for await (const k of await this.kv.keys("s.*")) ids.push(k.slice(2));
    let removed = 0;
    for (const id of ids) {
      const found = await this.read(id);
      if (!found) continue;
      const chunks = found.record.completed ? new Map<number, ChunkRecord>() : await this.received(found.record);
      const lastActivity = Math.max(found.record.createdAt, ...[...chunks.values()].map((c) => c.at));
      if (now - lastActivity < this.options.ttlMs) continue;
      try {
        await this.discard(found.record);
        removed++;
        if (!found.record.completed) this.sessions.inc({ outcome: "expired" });
      } catch (error) {
        this.options.logger.warn("could not remove an expired upload session", { session: id, error });
      }
    }
    if (removed > 0) this.options.logger.info("removed expired upload sessions", { count: removed });
    return removed;
  }

  /** Stops the hash worker (the service is stopping). */
  async close(): Promise<void> {
    await this.hasher.close();
  }

  /** Ids of sessions that are open (not completed): uploads in flight, for garbage collection. */
  async openShas(): Promise<Set<string>> {
    const out = new Set<string>();
    for await (const k of await this.kv.keys("h.>")) out.add(k.split(".")[1] ?? "");
    return out;
  }
}
