import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { access, constants, link, mkdir, open, opendir, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import { alignedBuffer } from "./aligned-memory.js";
import { BlobPack } from "./blob-pack.js";
import {
  SHA256,
  refuseOversize,
  verifyReceived,
  type BlobStat,
  type BlobStore,
  type ChunkPart,
  type ChunkedHandle,
} from "./blob-store.js";
import { readAll, syncDir, writeAll } from "./file-io.js";
import { GroupSync } from "./group-sync.js";
import { HotBlobs } from "./hot-blobs.js";

export { GroupSync } from "./group-sync.js";

/** Blobs up to this size are taken whole in memory by {@link FsBlobStore.put}. */
const SMALL_BLOB = 1024 * 1024;
/**
 * Blobs up to this size are records in pack files (see {@link BlobPack}) rather than files of
 * their own: below it a file's creation, not its bytes, is most of what storing one costs.
 */
const PACKED_BLOB = 64 * 1024;

/** Memory for copies of hot packed blobs (see {@link HotBlobs}); the constructor can change it. */
const HOT_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * O_DIRECT's unit: offsets, lengths and memory addresses of direct writes are multiples of it
 * (4096 covers every logical block size in use).
 */
const DIRECT_BLOCK = 4096;
/** Bytes per direct read of GetBlob: whole blocks, and one gRPC message each (under 4 MiB). */
const DIRECT_READ = 4 * 1024 * 1024 - DIRECT_BLOCK;

function uploadGone(cause: unknown): NearhubError {
  return new NearhubError(
    Code.NotFound,
    "the upload's file is gone (the session was aborted or expired); start a new upload",
    { cause },
  );
}

/** Removes a file if it is there: one unlink (rm's checks cost more on the small-blob path). */
async function removeFile(path: string): Promise<void> {
  await unlink(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT") throw error;
  });
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * Blobs in a local folder: `sha256/ab/cd/<sha256>`. An upload is written to `tmp/`, hashed as
 * it arrives, fsynced, and linked into place only when sha256 and size match, so a reader
 * never sees a partial or wrong blob and a crash leaves only a temporary file behind. Blobs up
 * to {@link PACKED_BLOB} bytes are instead records in `packs/` (see {@link BlobPack}); blobs
 * stored as files by earlier versions stay readable where they are.
 */
export class FsBlobStore implements BlobStore {
  /** Fan-out folders known to exist (each mkdir is a thread-pool round trip). */
  private readonly dirs = new Set<string>();
  /** False once the filesystem refused O_DIRECT, or where the platform has none. */
  private direct: boolean;
  /** The pack log of small blobs, opened (its index built) on first use. */
  private packOpening: Promise<BlobPack> | undefined;
  /** Copies of recently written and read packed blobs (see {@link HotBlobs}). */
  private readonly hot: HotBlobs;

  /**
   * `directIo` (default true) lets large chunk writes and reads bypass the page cache with
   * O_DIRECT where the platform and filesystem allow it; false always uses the page cache.
   */
  constructor(
    private readonly root: string,
    options: { directIo?: boolean; hotCacheBytes?: number } = {},
  ) {
    this.direct = (options.directIo ?? true) && constants.O_DIRECT !== undefined;
    this.hot = new HotBlobs(options.hotCacheBytes ?? HOT_CACHE_BYTES, PACKED_BLOB);
  }

  /** Folder fsyncs, shared by the puts that wait on the same folder at the same time. */
  private readonly dirSyncs = new GroupSync(syncDir);

  /**
   * Makes the verified (already fsynced) file `from` visible as `to` unless `to` exists: a hard
   * link fails rather than replace, so of concurrent puts of one blob (in any process) exactly
   * one creates it. Either way `to`'s folder entry is fsynced before this returns, so an
   * answered put survives a power cut. `from` is removed either way. Makes `to`'s folder first.
   */
  private async publish(from: string, to: string): Promise<{ created: boolean }> {
    const dir = dirname(to);
    let removed: Promise<void> | undefined;
    try {
      if (!this.dirs.has(dir)) await this.makeDir(dir);
      try {
        await link(from, to);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "EEXIST") {
          // Another put linked it and may still be waiting on its folder fsync.
          await this.dirSyncs.sync(dir);
          return { created: false };
        }
        if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP") {
          // A filesystem without hard links: rename, which may replace an identical blob.
          if (await exists(to)) return { created: false };
          await rename(from, to);
          await this.dirSyncs.sync(dir);
          return { created: true };
        }
        if (code !== "ENOENT" || !(await exists(from))) throw error;
        // The folder went away under us (removed by hand): make it again.
        await this.makeDir(dir);
        await link(from, to);
      }
      // The temporary name goes while the folder is synced: both are needed only before answering.
      removed = removeFile(from);
      await Promise.all([this.dirSyncs.sync(dir), removed]);
      return { created: true };
    } finally {
      await (removed ?? removeFile(from));
    }
  }

  /** Makes a fan-out folder; the entries of folders it creates are fsynced in their parents. */
  private async makeDir(dir: string): Promise<void> {
    const first = await mkdir(dir, { recursive: true });
    if (first !== undefined) {
      const made: string[] = [];
      for (let d = dir; d.length >= first.length; d = dirname(d)) made.push(d);
      await Promise.all(made.map((d) => this.dirSyncs.sync(dirname(d))));
    }
    this.dirs.add(dir);
  }

  /** The pack log once open: the hot paths skip awaiting {@link pack}. */
  private packed: BlobPack | undefined;

  private pack(): Promise<BlobPack> {
    if (!this.packOpening) {
      const pack = new BlobPack(join(this.root, "packs"));
      const opening = pack.open().then(() => (this.packed = pack));
      this.packOpening = opening;
      // A failed open (folder not writable yet) is tried again by the next caller.
      opening.catch(() => {
        if (this.packOpening === opening) this.packOpening = undefined;
      });
    }
    return this.packOpening;
  }

  /**
   * Reclaims the space of removed small blobs: packs mostly removed are rewritten (see
   * {@link BlobPack.compact}). Returns how many packs went.
   */
  async compact(): Promise<number> {
    return (await this.pack()).compact();
  }

  /** Seals the active pack and closes its descriptors (tests, shutdown); later calls reopen. */
  async close(): Promise<void> {
    const opening = this.packOpening;
    this.packOpening = undefined;
    this.packed = undefined;
    if (opening) await (await opening.catch(() => undefined))?.close();
  }

  private pathOf(sha256: string): string {
    return join(this.root, "sha256", sha256.slice(0, 2), sha256.slice(2, 4), sha256);
  }

  async check(): Promise<void> {
    await mkdir(join(this.root, "tmp"), { recursive: true });
    await access(this.root, constants.W_OK);
    // Leftovers of uploads cut by a crash are never referenced: clear them.
    await rm(join(this.root, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.root, "tmp"), { recursive: true });
    // Chunked uploads live in uploads/ and survive restarts; sessions expire and remove theirs.
    await mkdir(join(this.root, "uploads"), { recursive: true });
    // Builds the small blobs' index now rather than on the first call.
    await this.pack();
  }

  private uploadPath(handle: ChunkedHandle): string {
    const id = handle["sessionId"] ?? "";
    if (!/^[0-9a-f-]{36}$/.test(id))
      throw new NearhubError(Code.Internal, `bad upload handle ${JSON.stringify(handle)}`);
    return join(this.root, "uploads", id);
  }

  async beginChunked(sessionId: string, size: number): Promise<ChunkedHandle> {
    const handle = { sessionId };
    await mkdir(join(this.root, "uploads"), { recursive: true });
    const file = await open(this.uploadPath(handle), "w");
    try {
      // Sparse: chunks are written at their offsets in any order.
      await file.truncate(size);
      await file.sync();
    } finally {
      await file.close();
    }
    return handle;
  }

  async writeChunk(
    handle: ChunkedHandle,
    _index: number,
    offset: number,
    bytes: Uint8Array,
  ): Promise<{ etag: string }> {
    const path = this.uploadPath(handle);
    // The block-aligned body goes straight to disk when it can (see writeDirect); the rest, or
    // all of it where O_DIRECT is refused, through the page cache. One fdatasync covers both.
    const head = offset % DIRECT_BLOCK === 0 ? await this.writeDirect(path, offset, bytes) : 0;
    let file;
    try {
      file = await open(path, "r+");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") throw uploadGone(error);
      throw error;
    }
    try {
      await writeAll(file, bytes, offset, head);
      await file.datasync();
    } finally {
      await file.close();
    }
    return { etag: "" };
  }

  /**
   * Writes the longest whole-block prefix of `bytes` at `offset` (block-aligned) with O_DIRECT:
   * from the caller's memory to the disk, without a copy into the page cache (on a large upload
   * that copy, into pages the kernel must first find and clear, costs more CPU than everything
   * else the service does with the bytes). Returns how many bytes it wrote: 0 when the prefix is
   * empty, the memory is not aligned (EINVAL; nothing is written), or the filesystem has no
   * O_DIRECT (then it is not tried again).
   */
  private async writeDirect(path: string, offset: number, bytes: Uint8Array): Promise<number> {
    const length = bytes.byteLength - (bytes.byteLength % DIRECT_BLOCK);
    if (!this.direct || length === 0 || bytes.byteOffset % DIRECT_BLOCK !== 0) return 0;
    let file;
    try {
      file = await open(path, constants.O_RDWR | constants.O_DIRECT);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT") throw uploadGone(error);
      if (code !== "EINVAL") throw error;
      this.direct = false;
      return 0;
    }
    try {
      await writeAll(file, bytes.subarray(0, length), offset);
      return length;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EINVAL") return 0;
      throw error;
    } finally {
      await file.close();
    }
  }

  async completeChunked(
    handle: ChunkedHandle,
    expected: BlobStat,
    _parts: ChunkPart[],
    received?: { sha256: string },
  ): Promise<{ created: boolean }> {
    const path = this.uploadPath(handle);
    const target = this.pathOf(expected.sha256);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch (error) {
      // A concurrent completion of the same session already moved it into place.
      if ((error as NodeJS.ErrnoException).code === "ENOENT" && (await this.stat(expected.sha256)))
        return { created: false };
      throw error;
    }
    // The chunks were hashed in order as they were written; without that (a restart, chunks
    // written by another replica) read the file back.
    let actual = received?.sha256;
    if (actual === undefined) {
      const hash = createHash("sha256");
      for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 }))
        hash.update(chunk as Buffer);
      actual = hash.digest("hex");
    }
    if (size !== expected.size || actual !== expected.sha256) {
      await rm(path, { force: true });
      throw new NearhubError(
        Code.InvalidArgument,
        `the assembled upload has sha256 ${actual} and ${size} bytes, not the declared ${expected.sha256} and ${expected.size}; nothing was stored and the session is discarded`,
      );
    }
    try {
      return await this.publish(path, target);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT" && (await this.stat(expected.sha256)))
        return { created: false };
      throw error;
    }
  }

  async abortChunked(handle: ChunkedHandle): Promise<void> {
    await rm(this.uploadPath(handle), { force: true });
  }

  /**
   * A large range read with O_DIRECT, by whole blocks into one page-aligned buffer, as a fresh
   * copy of each piece (the receiver may hold one while the next is read). The disk fills the
   * buffer itself: no page-cache pages are found, cleared and copied from, which for a blob
   * written with O_DIRECT (so not in the cache) is most of the CPU a read costs. Undefined when
   * the file or the memory refuses O_DIRECT (nothing was read; the caller streams the file).
   */
  private async readDirect(
    path: string,
    offset: number,
    length: number | undefined,
  ): Promise<AsyncIterable<Uint8Array> | undefined> {
    let file;
    try {
      file = await open(path, constants.O_RDONLY | constants.O_DIRECT);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EINVAL") throw error;
      this.direct = false;
      return undefined;
    }
    const buffer = alignedBuffer(DIRECT_READ, false);
    const start = offset - (offset % DIRECT_BLOCK);
    let n;
    try {
      n = (await file.read(buffer, 0, DIRECT_READ, start)).bytesRead;
    } catch (error) {
      await file.close();
      if ((error as NodeJS.ErrnoException).code === "EINVAL") return undefined;
      throw error;
    }
    const end = length === undefined ? Infinity : offset + length;
    return (async function* () {
      try {
        for (let block = start; ; block += DIRECT_READ) {
          if (block > start) n = (await file.read(buffer, 0, DIRECT_READ, block)).bytesRead;
          const from = Math.max(offset, block) - block;
          const to = Math.min(n, end - block);
          if (to > from) {
            const piece = Buffer.allocUnsafeSlow(to - from);
            buffer.copy(piece, 0, from, to);
            yield piece;
          }
          if (n < DIRECT_READ || block + DIRECT_READ >= end) return;
        }
      } finally {
        await file.close();
      }
    })();
  }

  async *list(): AsyncIterable<BlobStat & { modifiedAt: number }> {
    const pack = await this.pack();
    yield* await pack.entries();
    const base = join(this.root, "sha256");
    let top;
    try {
      top = await opendir(base);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw error;
    }
    for await (const a of top) {
      if (!a.isDirectory()) continue;
      for await (const b of await opendir(join(base, a.name))) {
        if (!b.isDirectory()) continue;
        for await (const f of await opendir(join(base, a.name, b.name))) {
          // A small blob stored as a file by an earlier version and packed since: listed once.
          if (!SHA256.test(f.name) || pack.has(f.name)) continue;
          const s = await stat(join(base, a.name, b.name, f.name)).catch(() => undefined);
          if (s) yield { sha256: f.name, size: s.size, modifiedAt: s.mtimeMs };
        }
      }
    }
  }

  async remove(sha256: string): Promise<boolean> {
    this.hot.delete(sha256);
    const packed = await (await this.pack()).remove(sha256);
    const path = this.pathOf(sha256);
    if (!(await exists(path))) return packed;
    await rm(path, { force: true });
    return true;
  }

  /** From the pack index, else the blob's file, else the index after a rescan of the packs. */
  async stat(sha256: string): Promise<BlobStat | undefined> {
    const pack = this.packed ?? (await this.pack());
    const packed = pack.current() ? pack.entry(sha256) : await pack.lookup(sha256);
    if (packed) return { sha256, size: packed.size };
    try {
      const s = await stat(this.pathOf(sha256));
      return { sha256, size: s.size };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    }
    // Another replica may have packed it since this one last looked.
    const found = await pack.find(sha256);
    return found ? { sha256, size: found.size } : undefined;
  }

  async put(
    expected: BlobStat,
    chunks: AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<{ created: boolean }> {
    if (expected.size <= SMALL_BLOB) return this.putSmall(expected, chunks, signal);
    const tmp = join(this.root, "tmp", randomUUID());
    const hash = createHash("sha256");
    const file = await open(tmp, "wx");
    let size = 0;
    try {
      for await (const chunk of chunks) {
        signal?.throwIfAborted();
        size += chunk.byteLength;
        refuseOversize(expected, size);
        hash.update(chunk);
        await file.write(chunk);
      }
      verifyReceived(expected, size, hash);
      await file.sync();
      await file.close();
      const target = this.pathOf(expected.sha256);
      return await this.publish(tmp, target);
    } catch (error) {
      await file.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw error;
    }
  }

  /**
   * A small blob is received whole and verified before the disk sees it, so a refused one
   * costs no I/O, one already stored a stat and a (shared) folder fsync, and a new one: stat,
   * open, write, fdatasync, then close alongside link, the folder fsync (shared by concurrent
   * puts into that folder), unlink. The link still settles a race between puts.
   */
  private async putSmall(
    expected: BlobStat,
    chunks: AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<{ created: boolean }> {
    const hash = createHash("sha256");
    const parts: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of chunks) {
      signal?.throwIfAborted();
      size += chunk.byteLength;
      refuseOversize(expected, size);
      hash.update(chunk);
      parts.push(chunk);
    }
    verifyReceived(expected, size, hash);
    if (size <= PACKED_BLOB) {
      const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
      const result = await (this.packed ?? (await this.pack())).put(expected.sha256, bytes);
      // Verified and durable: a read soon after (the usual case) needs no I/O.
      this.hot.set(expected.sha256, bytes);
      return result;
    }
    // A blob already stored (content-addressed: same sha, same bytes) costs one stat, not a
    // write and an fdatasync that the link would then refuse.
    const target = this.pathOf(expected.sha256);
    if (await exists(target)) {
      // Its put may still be waiting on the folder fsync (in another process, too): share it.
      await this.dirSyncs.sync(dirname(target));
      return { created: false };
    }
    const tmp = join(this.root, "tmp", randomUUID());
    const file = await open(tmp, "wx");
    let closed: Promise<void> | undefined;
    try {
      try {
        const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
        await writeAll(file, bytes, 0);
        // Durable before it becomes visible, and before the call answers.
        await file.datasync();
      } catch (error) {
        await file.close();
        throw error;
      }
      // The link needs the path, not the descriptor: close alongside it.
      closed = file.close();
      const [result] = await Promise.all([this.publish(tmp, target), closed]);
      return result;
    } catch (error) {
      await closed?.catch(() => undefined);
      await rm(tmp, { force: true });
      throw error;
    }
  }

  /** A rescanned pack entry for a blob that has no file; undefined when it has one. */
  private async missing(pack: BlobPack, sha256: string) {
    return (await exists(this.pathOf(sha256))) ? undefined : pack.find(sha256);
  }

  async *get(
    sha256: string,
    offset: number,
    length: number | undefined,
    options: { fromDisk?: boolean } = {},
  ): AsyncIterable<Uint8Array> {
    const cached = options.fromDisk ? undefined : this.hot.get(sha256);
    if (cached) {
      const end = length === undefined ? cached.byteLength : Math.min(cached.byteLength, offset + length);
      if (end > offset) yield cached.subarray(offset, end);
      return;
    }
    const pack = this.packed ?? (await this.pack());
    // The caller usually stat()ed just before, so a blob packed by another replica is known.
    const packed =
      (pack.current() ? pack.entry(sha256) : await pack.lookup(sha256)) ?? (await this.missing(pack, sha256));
    if (packed) {
      let bytes;
      try {
        bytes = await pack.read(packed, offset, length ?? packed.size - offset);
      } catch (error) {
        // Its pack was compacted away between the lookup and the read: read the copy.
        const moved = (error as NodeJS.ErrnoException).code === "ENOENT" ? await pack.find(sha256) : undefined;
        if (!moved) throw error;
        bytes = await pack.read(moved, offset, length ?? moved.size - offset);
      }
      // A whole blob read from disk goes into the cache; a scrub's read (fromDisk) does not vouch
      // for it, so it does not, and a range is not the blob.
      if (!options.fromDisk && offset === 0 && bytes.byteLength === packed.size) this.hot.set(sha256, bytes);
      if (bytes.byteLength > 0) yield bytes;
      return;
    }
    if (length !== undefined && length <= SMALL_BLOB) {
      // One read instead of a stream: three thread-pool calls rather than four or more.
      const file = await open(this.pathOf(sha256), "r");
      const buffer = Buffer.allocUnsafe(length);
      let read;
      try {
        read = await readAll(file, buffer, length, offset);
      } finally {
        await file.close();
      }
      if (read > 0) yield buffer.subarray(0, read);
      return;
    }
    const direct = this.direct ? await this.readDirect(this.pathOf(sha256), offset, length) : undefined;
    if (direct) {
      yield* direct;
      return;
    }
    const end = length === undefined ? undefined : offset + length - 1;
    const stream = createReadStream(this.pathOf(sha256), {
      start: offset,
      ...(end !== undefined ? { end } : {}),
      highWaterMark: 1024 * 1024,
    });
    for await (const chunk of stream) yield chunk as Buffer;
  }
}
