/**
 * The bytes of recently written or read small blobs, in memory, least recently used first out.
 *
 * A blob is named by its sha256, so a cached copy is never stale: only a removal ends it. A hit
 * saves a read's thread-pool round trip (a wake-up of a libuv thread, the syscall, the
 * completion back on the event loop), which for a 4 KiB blob costs more CPU than everything
 * else GetBlob does with it; the small files a model repository is read for (config.json,
 * tokenizer files, READMEs) are read again and again.
 */
export class HotBlobs {
  private readonly blobs = new Map<string, Buffer>();
  private total = 0;

  /** `limitBytes`: the most held at once (0 turns the cache off); `maxBlob`: the largest kept. */
  constructor(
    private readonly limitBytes: number,
    private readonly maxBlob: number,
  ) {}

  /** The blob's bytes, now the most recently used; undefined when not held. */
  get(sha256: string): Buffer | undefined {
    const bytes = this.blobs.get(sha256);
    if (bytes) {
      this.blobs.delete(sha256);
      this.blobs.set(sha256, bytes);
    }
    return bytes;
  }

  /** Keeps a copy of `bytes` (the whole blob, already verified against `sha256`). */
  set(sha256: string, bytes: Uint8Array): void {
    if (bytes.byteLength > this.maxBlob || bytes.byteLength > this.limitBytes || this.blobs.has(sha256)) return;
    // A copy: the caller's bytes may be a view of a larger buffer (a gRPC message) that the
    // cache would otherwise keep alive, or memory that is reused.
    this.blobs.set(sha256, Buffer.from(bytes));
    this.total += bytes.byteLength;
    for (const [oldest, old] of this.blobs) {
      if (this.total <= this.limitBytes) break;
      this.blobs.delete(oldest);
      this.total -= old.byteLength;
    }
  }

  delete(sha256: string): void {
    const bytes = this.blobs.get(sha256);
    if (!bytes) return;
    this.blobs.delete(sha256);
    this.total -= bytes.byteLength;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.total;
  }

  /** Blobs held now. */
  get size(): number {
    return this.blobs.size;
  }
}
