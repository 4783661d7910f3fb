import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { access, constants, link, mkdir, open, opendir, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import { SHA256, type BlobStat, type BlobStore, type ChunkPart, type ChunkedHandle } from "./blob-store.js";

/** Blobs up to this size are taken whole in memory by {@link FsBlobStore.put}. */
const SMALL_BLOB = 1024 * 1024;

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
 * never sees a partial or wrong blob and a crash leaves only a temporary file behind.
 */
export class FsBlobStore implements BlobStore {
  /** Fan-out folders known to exist (each mkdir is a thread-pool round trip). */
  private readonly dirs = new Set<string>();

  constructor(private readonly root: string) {}

  /**
   * Makes the verified file `from` visible as `to` unless `to` exists: a hard link fails rather
   * than replace, so of concurrent puts of one blob (in any process) exactly one creates it.
   * `from` is removed either way. Makes `to`'s folder first.
   */
  private async publish(from: string, to: string): Promise<{ created: boolean }> {
    const dir = dirname(to);
    try {
      if (!this.dirs.has(dir)) {
        await mkdir(dir, { recursive: true });
        this.dirs.add(dir);
      }
      try {
        await link(from, to);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "EEXIST") return { created: false };
        if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP") {
          // A filesystem without hard links: rename, which may replace an identical blob.
          if (await exists(to)) return { created: false };
          await rename(from, to);
          return { created: true };
        }
        if (code !== "ENOENT" || !(await exists(from))) throw error;
        // The folder went away under us (removed by hand): make it again.
        await mkdir(dir, { recursive: true });
        await link(from, to);
      }
      return { created: true };
    } finally {
      await removeFile(from);
    }
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
    let file;
    try {
      file = await open(this.uploadPath(handle), "r+");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT")
        throw new NearhubError(
          Code.NotFound,
          "the upload's file is gone (the session was aborted or expired); start a new upload",
        );
      throw error;
    }
    try {
      let written = 0;
      while (written < bytes.byteLength) {
        const { bytesWritten } = await file.write(bytes, written, bytes.byteLength - written, offset + written);
        written += bytesWritten;
      }
      await file.datasync();
    } finally {
      await file.close();
    }
    return { etag: "" };
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

  async *list(): AsyncIterable<BlobStat & { modifiedAt: number }> {
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
          if (!SHA256.test(f.name)) continue;
          const s = await stat(join(base, a.name, b.name, f.name)).catch(() => undefined);
          if (s) yield { sha256: f.name, size: s.size, modifiedAt: s.mtimeMs };
        }
      }
    }
  }

  async remove(sha256: string): Promise<boolean> {
    const path = this.pathOf(sha256);
    if (!(await this.stat(sha256))) return false;
    await rm(path, { force: true });
    return true;
  }

  async stat(sha256: string): Promise<BlobStat | undefined> {
    try {
      const s = await stat(this.pathOf(sha256));
      return { sha256, size: s.size };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
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
        if (size > expected.size) {
          throw new NearhubError(
            Code.InvalidArgument,
            `upload is larger than the declared ${expected.size} bytes; nothing was stored`,
          );
        }
        hash.update(chunk);
        await file.write(chunk);
      }
      if (size !== expected.size) {
        throw new NearhubError(
          Code.InvalidArgument,
          `upload has ${size} bytes but declared ${expected.size}; nothing was stored`,
        );
      }
      const actual = hash.digest("hex");
      if (actual !== expected.sha256) {
        throw new NearhubError(
          Code.InvalidArgument,
          `sha256 mismatch: declared ${expected.sha256}, received ${actual}; nothing was stored`,
        );
      }
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
   * costs no I/O and a stored one six thread-pool calls: open, write, fdatasync, close, link,
   * unlink (no lookup first: the link finds an existing blob).
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
      if (size > expected.size) {
        throw new NearhubError(
          Code.InvalidArgument,
          `upload is larger than the declared ${expected.size} bytes; nothing was stored`,
        );
      }
      hash.update(chunk);
      parts.push(chunk);
    }
    if (size !== expected.size) {
      throw new NearhubError(
        Code.InvalidArgument,
        `upload has ${size} bytes but declared ${expected.size}; nothing was stored`,
      );
    }
    const actual = hash.digest("hex");
    if (actual !== expected.sha256) {
      throw new NearhubError(
        Code.InvalidArgument,
        `sha256 mismatch: declared ${expected.sha256}, received ${actual}; nothing was stored`,
      );
    }
    const tmp = join(this.root, "tmp", randomUUID());
    const file = await open(tmp, "wx");
    try {
      try {
        const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
        for (let written = 0; written < size;) {
          written += (await file.write(bytes, written, size - written, written)).bytesWritten;
        }
        // Durable before it becomes visible, and before the call answers.
        await file.datasync();
      } finally {
        await file.close();
      }
      return await this.publish(tmp, this.pathOf(expected.sha256));
    } catch (error) {
      await rm(tmp, { force: true });
      throw error;
    }
  }

  async *get(sha256: string, offset: number, length: number | undefined): AsyncIterable<Uint8Array> {
    if (length !== undefined && length <= SMALL_BLOB) {
      // One read instead of a stream: three thread-pool calls rather than four or more.
      const file = await open(this.pathOf(sha256), "r");
      const buffer = Buffer.allocUnsafe(length);
      let read = 0;
      try {
        for (let n = -1; read < length && n !== 0; read += n) {
          n = (await file.read(buffer, read, length - read, offset + read)).bytesRead;
        }
      } finally {
        await file.close();
      }
      if (read > 0) yield buffer.subarray(0, read);
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
