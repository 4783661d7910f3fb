import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { access, constants, mkdir, open, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import type { BlobStat, BlobStore } from "./blob-store.js";

/**
 * Blobs in a local folder: `sha256/ab/cd/<sha256>`. An upload is written to `tmp/`, hashed as
 * it arrives, fsynced, and renamed into place only when sha256 and size match, so a reader
 * never sees a partial or wrong blob and a crash leaves only a temporary file behind.
 */
export class FsBlobStore implements BlobStore {
  constructor(private readonly root: string) {}

  private pathOf(sha256: string): string {
    return join(this.root, "sha256", sha256.slice(0, 2), sha256.slice(2, 4), sha256);
  }

  async check(): Promise<void> {
    await mkdir(join(this.root, "tmp"), { recursive: true });
    await access(this.root, constants.W_OK);
    // Leftovers of uploads cut by a crash are never referenced: clear them.
    await rm(join(this.root, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.root, "tmp"), { recursive: true });
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

  async put(expected: BlobStat, chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<{ created: boolean }> {
    const tmp = join(this.root, "tmp", randomUUID());
    const hash = createHash("sha256");
    const file = await open(tmp, "wx");
    let size = 0;
    try {
      for await (const chunk of chunks) {
        signal?.throwIfAborted();
        size += chunk.byteLength;
        if (size > expected.size) {
          throw new NearhubError(Code.InvalidArgument, `upload is larger than the declared ${expected.size} bytes; nothing was stored`);
        }
        hash.update(chunk);
        await file.write(chunk);
      }
      if (size !== expected.size) {
        throw new NearhubError(Code.InvalidArgument, `upload has ${size} bytes but declared ${expected.size}; nothing was stored`);
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
      if (await this.stat(expected.sha256)) {
        await rm(tmp, { force: true });
        return { created: false };
      }
      await mkdir(join(target, ".."), { recursive: true });
      await rename(tmp, target);
      return { created: true };
    } catch (error) {
      await file.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw error;
    }
  }

  async *get(sha256: string, offset: number, length: number | undefined): AsyncIterable<Uint8Array> {
    const end = length === undefined ? undefined : offset + length - 1;
    const stream = createReadStream(this.pathOf(sha256), {
      start: offset,
      ...(end !== undefined ? { end } : {}),
      highWaterMark: 1024 * 1024,
    });
    for await (const chunk of stream) yield chunk as Buffer;
  }
}
