import type { Hash } from "node:crypto";
import { Code, NearhubError } from "@nearhub/platform";

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
  /**
   * Streams `length` bytes (to the end when undefined) from `offset`. `fromDisk` reads the
   * stored bytes themselves, never a copy held in memory (scrub checks what is on disk).
   */
  get(
    sha256: string,
    offset: number,
    length: number | undefined,
    options?: { fromDisk?: boolean },
  ): AsyncIterable<Uint8Array>;
  /** Throws when the backend cannot be used (folder not writable, bucket unreachable). */
  check(): Promise<void>;

  // Chunked (resumable) uploads. The handle is plain JSON kept in the session KV, so any
  // replica, or this one after a restart, can continue the upload.
  /** Prepares backend state for a chunked upload of `size` bytes. */
  beginChunked(sessionId: string, size: number): Promise<ChunkedHandle>;
  /**
   * Prepares a chunked upload that assembles straight under the blob's own key (S3: a
   * multipart upload of the content key), saving the copy from a temporary object. Its parts
   * cannot be read back, so {@link completeChunked} takes such a handle only with `received`,
   * the in-order digest of the very parts; a session that lost that digest starts over with
   * {@link beginChunked}. Absent when the backend can read a chunked upload back cheaply (fs).
   */
  beginDirect?(sessionId: string, expected: BlobStat): Promise<ChunkedHandle>;
  /**
   * Stores one chunk (already verified; `sha256` is its digest) at `offset`; returns its S3 part
   * etag ("" on fs).
   */
  writeChunk(
    handle: ChunkedHandle,
    index: number,
    offset: number,
    bytes: Uint8Array,
    sha256?: string,
  ): Promise<{ etag: string }>;
  /**
   * Assembles the parts, verifies the whole sha256 and size, and makes the blob visible
   * atomically (nothing visible on a mismatch, which also discards the upload). `received`,
   * when given, is the sha256 of these very parts in order, computed from the verified chunk
   * bytes as they were stored: the backend compares it instead of reading the blob back.
   */
  completeChunked(
    handle: ChunkedHandle,
    expected: BlobStat,
    parts: ChunkPart[],
    received?: { sha256: string },
  ): Promise<{ created: boolean }>;
  /** Best-effort removal of an unfinished upload's parts. */
  abortChunked(handle: ChunkedHandle): Promise<void>;
  /** A URL that downloads the blob directly; undefined when the backend has none (fs). */
  presignGet?(sha256: string, expirySeconds: number): Promise<string>;
  /** Every stored blob (for garbage collection and scrub). */
  list(): AsyncIterable<BlobStat & { modifiedAt: number }>;
  /** Removes a blob; false when it was absent. */
  remove(sha256: string): Promise<boolean>;
}

/** Backend state of a chunked upload: `{key, uploadId}` on S3, `{path}` on fs. */
export type ChunkedHandle = Record<string, string>;

/** A stored chunk of a chunked upload. */
export interface ChunkPart {
  index: number;
  etag: string;
  size: number;
}

/** Lower-case hex sha256. */
export const SHA256 = /^[0-9a-f]{64}$/;

/** Refuses a put whose bytes so far (`received`) already exceed its declared size. */
export function refuseOversize(expected: BlobStat, received: number): void {
  if (received > expected.size) {
    throw new NearhubError(
      Code.InvalidArgument,
      `upload is larger than the declared ${expected.size} bytes; nothing was stored`,
    );
  }
}

/**
 * Checks a finished put against its declaration: `received` bytes that `hash` digested. Returns
 * the hex digest; refuses, saying what differs, when the size or the digest does not match.
 */
export function verifyReceived(expected: BlobStat, received: number, hash: Hash): string {
  if (received !== expected.size) {
    throw new NearhubError(
      Code.InvalidArgument,
      `upload has ${received} bytes but declared ${expected.size}; nothing was stored`,
    );
  }
  const actual = hash.digest("hex");
  if (actual !== expected.sha256) {
    throw new NearhubError(
      Code.InvalidArgument,
      `sha256 mismatch: declared ${expected.sha256}, received ${actual}; nothing was stored`,
    );
  }
  return actual;
}
