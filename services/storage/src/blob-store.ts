/** Size and digest of a stored blob. */
export interface BlobStat {
  sha256: string;
  size: number;
}

/** A content-addressed blob backend (a local folder or S3). */
export interface BlobStore {
  /** The blob's size, or undefined when absent. */
  stat(sha256: string): Promise<BlobStat | undefined>;
  /**
   * Stores the bytes if their sha256 and size are as expected; nothing becomes visible
   * otherwise. `created` is false when the blob already existed.
   */
  put(expected: BlobStat, chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<{ created: boolean }>;
  /** Streams `length` bytes (to the end when undefined) from `offset`. */
  get(sha256: string, offset: number, length: number | undefined): AsyncIterable<Uint8Array>;
  /** Throws when the backend cannot be used (folder not writable, bucket unreachable). */
  check(): Promise<void>;
}

/** Lower-case hex sha256. */
export const SHA256 = /^[0-9a-f]{64}$/;
