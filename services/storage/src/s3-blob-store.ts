import { createHash, randomUUID } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type { Readable } from "node:stream";
import { Code, NearhubError, silentLogger, type Logger } from "@nearhub/platform";
import { Client, CopyDestinationOptions, CopySourceOptions, S3Error } from "minio";
import {
  SHA256,
  refuseOversize,
  verifyReceived,
  type BlobStat,
  type BlobStore,
  type ChunkPart,
  type ChunkedHandle,
} from "./blob-store.js";
import type { S3Settings } from "./config.js";

/** S3 copies an object of at most 5 GiB in one request; larger ones take a multipart copy. */
const MAX_SINGLE_COPY = 5 * 1024 ** 3;
/** The largest S3 object. */
const MAX_OBJECT = 5 * 1024 ** 4;
/** A temporary object this old belongs to no live upload: a crash or a failed cleanup left it. */
const STALE_TMP_MS = 24 * 60 * 60 * 1000;
/** The longest presigned URL S3 signs (SigV4): seven days. */
const MAX_PRESIGN_SECONDS = 7 * 24 * 60 * 60;
/**
 * Blobs up to this size are put whole, in one PUT to their key, after they were hashed in
 * memory (the minio client held such a blob whole anyway); larger ones as a multipart upload.
 */
const SINGLE_PUT_MAX = 64 * 1024 * 1024;

/** Options of {@link S3BlobStore}. */
export interface S3BlobStoreOptions extends S3Settings {
  /** Where cleanup failures go (they never replace the error being thrown). */
  logger?: Logger;
  /** How long to wait for a TCP connection to the endpoint; 10 s by default. */
  connectTimeoutMs?: number;
}

/**
 * Blobs in an S3 bucket (MinIO, AWS, any S3 protocol server): `sha256/ab/cd/<sha256>`. Nothing
 * appears under a key before its bytes were verified against the declared sha256 and size:
 * - a blob of up to 64 MiB is received whole into memory, hashed, and only then PUT to its key;
 * - a larger {@link put} streams as a multipart upload of its key while being hashed, completed
 *   (which makes the whole object visible at once) only when sha256 and size match;
 * - a chunked upload started with {@link beginDirect} is a multipart upload of the key itself:
 *   S3 shows nothing of it until CompleteMultipartUpload, which makes the whole object visible
 *   at once, and {@link completeChunked} issues that only once the in-order digest of the very
 *   parts (pinned by their etags) equals the declared one. This saves the copy of the whole
 *   blob inside the S3 server that a temporary key costs (2 to 2.5 s of a 1 GiB upload on
 *   s3rver, a sixth of it, and the same again in disk writes; a real copy on MinIO too), and the
 *   temporary object's removal. {@link beginChunked} keeps the temporary key for sessions that
 *   must be verified by reading the assembled object back.
 * A crash leaves only a temporary object, which {@link check} at the next start-up removes once
 * it is a day old, or parts of an unfinished multipart upload (only an abort, or a bucket
 * lifecycle rule, frees those).
 *
 * Memory per {@link put}: a blob of up to 64 MiB whole; for larger blobs up to three parts (two
 * being sent, one filling) of 64 MiB, more for blobs over 640 GB. Never the whole of a large blob.
 */
export class S3BlobStore implements BlobStore {
  private readonly client: Client;
  private readonly bucket: string;
  private readonly endpoint: string;
  private readonly logger: Logger;
  /** Per digest, the tail of the publish steps in flight, so concurrent puts create once. */
  private readonly publishing = new Map<string, Promise<void>>();

  constructor(options: S3BlobStoreOptions) {
    const url = new URL(options.endpoint);
    const useSSL = url.protocol === "https:";
    this.endpoint = options.endpoint;
    this.bucket = options.bucket;
    this.logger = options.logger ?? silentLogger;
    this.client = new Client({
      endPoint: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: Number(url.port || (useSSL ? 443 : 80)),
      useSSL,
      region: options.region,
      accessKey: options.accessKey,
      secretKey: options.secretKey,
      pathStyle: options.pathStyle,
      transport: withConnectTimeout(useSSL ? https : http, options.endpoint, options.connectTimeoutMs ?? 10_000),
      // minio's retry prints to the console outside our logger, throws away the S3 error code
      // and cannot replay a streamed body; callers retry whole operations instead.
      retryOptions: { disableRetry: true },
    });
  }

  private keyOf(sha256: string): string {
    return `sha256/${sha256.slice(0, 2)}/${sha256.slice(2, 4)}/${sha256}`;
  }

  async check(): Promise<void> {
    let exists: boolean;
    try {
      exists = await this.client.bucketExists(this.bucket);
    } catch (error) {
      throw this.fail(error, `checking bucket ${this.bucket}`);
    }
    if (!exists) throw this.noSuchBucket();
    // Credentials that may read but not write would otherwise pass and fail every upload.
    const probe = `tmp/check-${randomUUID()}`;
    try {
      await this.client.putObject(this.bucket, probe, Buffer.alloc(0), 0);
      await this.client.removeObject(this.bucket, probe);
    } catch (error) {
      throw this.fail(error, `writing a test object ${probe} to bucket ${this.bucket}`);
    }
    await this.sweepTemporaries();
  }

  async stat(sha256: string): Promise<BlobStat | undefined> {
    try {
      const s = await this.client.statObject(this.bucket, this.keyOf(sha256));
      return { sha256, size: s.size };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw this.fail(error, `looking up blob ${sha256}`);
    }
  }

  async put(
    expected: BlobStat,
    chunks: AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<{ created: boolean }> {
    if (expected.size > MAX_OBJECT) {
      throw new NearhubError(
        Code.InvalidArgument,
        `a blob of ${expected.size} bytes is over the 5 TiB S3 object limit; nothing was stored`,
      );
    }
    return expected.size <= SINGLE_PUT_MAX
      ? this.putWhole(expected, chunks, signal)
      : this.putParts(expected, chunks, signal);
  }

  /**
   * Receives a blob of at most {@link SINGLE_PUT_MAX} into memory, verifies it, and PUTs it to
   * its key unless it is there already: one request, no temporary object and no copy.
   */
  private async putWhole(
    expected: BlobStat,
    chunks: AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<{ created: boolean }> {
    const body = Buffer.allocUnsafe(expected.size);
    const hash = createHash("sha256");
    let received = 0;
    for await (const chunk of chunks) {
      signal?.throwIfAborted();
      refuseOversize(expected, received + chunk.byteLength);
      body.set(chunk, received);
      received += chunk.byteLength;
      hash.update(chunk);
    }
    signal?.throwIfAborted();
    const actual = verifyReceived(expected, received, hash);
    const key = this.keyOf(expected.sha256);
    return this.oneAtATime(expected.sha256, async () => {
      // Another replica may PUT the same verified bytes at the same moment: S3 keeps one object.
      if (await this.stat(expected.sha256)) return { created: false };
      try {
        // The body is in memory, so the request can be sent again.
        await retryTransient(() => this.putWithDigest(key, "", body, actual));
      } catch (error) {
        throw this.fail(error, `storing blob ${expected.sha256} at ${key}`);
      }
      return { created: true };
    });
  }

  /**
   * Streams a blob larger than {@link SINGLE_PUT_MAX} as a multipart upload of its own key,
   * hashing it on the way, and completes the upload (which makes the object visible at once)
   * only when sha256 and size match; otherwise aborts it, and nothing appears. Parts of
   * `calculatePartSize` (64 MiB up to 640 GB), two in flight while the next one fills.
   */
  private async putParts(
    expected: BlobStat,
    chunks: AsyncIterable<Uint8Array>,
    signal?: AbortSignal,
  ): Promise<{ created: boolean }> {
    const key = this.keyOf(expected.sha256);
    let uploadId: string;
    try {
      uploadId = await this.client.initiateNewMultipartUpload(this.bucket, key, {});
    } catch (error) {
      throw this.fail(error, `starting a multipart upload of ${key}`);
    }
    const partSize = this.client.calculatePartSize(expected.size);
    const parts: Array<{ part: number; etag: string }> = [];
    const sending = new Set<Promise<void>>();
    let failed: NearhubError | undefined;
    const send = async (part: number, body: Buffer) => {
      const request = {
        bucketName: this.bucket,
        objectName: key,
        uploadID: uploadId,
        partNumber: part,
        headers: { "Content-Length": String(body.byteLength) },
      };
      const sent = retryTransient(() => this.client.uploadPart(request, body)).then(
        ({ etag }) => void parts.push({ part, etag }),
        (error: unknown) => void (failed ??= this.fail(error, `uploading part ${part} of ${key}`)),
      );
      sending.add(sent);
      void sent.finally(() => sending.delete(sent));
      while (sending.size >= 2) await Promise.race(sending);
      if (failed !== undefined) throw failed;
    };
    try {
      const hash = createHash("sha256");
      let received = 0;
      let part = 1;
      let buffer = Buffer.allocUnsafe(partSize);
      let filled = 0;
      for await (const chunk of chunks) {
        signal?.throwIfAborted();
        refuseOversize(expected, received + chunk.byteLength);
        received += chunk.byteLength;
        hash.update(chunk);
        for (let at = 0; at < chunk.byteLength;) {
          const n = Math.min(chunk.byteLength - at, partSize - filled);
          buffer.set(chunk.subarray(at, at + n), filled);
          filled += n;
          at += n;
          if (filled === partSize) {
            await send(part++, buffer);
            buffer = Buffer.allocUnsafe(partSize);
            filled = 0;
          }
        }
      }
      signal?.throwIfAborted();
      verifyReceived(expected, received, hash);
      if (filled > 0) await send(part, buffer.subarray(0, filled));
      await Promise.all(sending);
      if (failed !== undefined) throw failed;
    } catch (error) {
      await Promise.allSettled(sending);
      await this.abortChunked({ key, uploadId, direct: expected.sha256 });
      throw NearhubError.from(error);
    }
    return this.oneAtATime(expected.sha256, async () => {
      if (await this.stat(expected.sha256)) {
        await this.abortChunked({ key, uploadId, direct: expected.sha256 });
        return { created: false };
      }
      try {
        await this.client.completeMultipartUpload(
          this.bucket,
          key,
          uploadId,
          parts.sort((a, b) => a.part - b.part),
        );
      } catch (error) {
        throw this.fail(error, `completing the multipart upload of ${key}`);
      }
      return { created: true };
    });
  }

  /** Copies a verified temporary object to its key unless the blob is already there. */
  private async publish(expected: BlobStat, tmp: string, etag: string): Promise<{ created: boolean }> {
    try {
      if (await this.stat(expected.sha256)) return { created: false };
      const key = this.keyOf(expected.sha256);
      // The etag (quoted, as If-Match wants it) pins the copy to the very bytes that were hashed.
      const source = new CopySourceOptions({
        Bucket: this.bucket,
        Object: tmp,
        ...(etag ? { MatchETag: `"${etag}"` } : {}),
      });
      const destination = new CopyDestinationOptions({ Bucket: this.bucket, Object: key });
      try {
        // A server-side copy of the same bytes is idempotent, so a transient answer is retried.
        if (expected.size <= MAX_SINGLE_COPY) {
          await retryTransient(() => this.client.copyObject(source, destination));
        } else {
          await retryTransient(() => this.client.composeObject(destination, [source]));
        }
      } catch (error) {
        throw this.fail(error, `copying ${tmp} to ${key}`);
      }
      // composeObject answers a failed multipart copy with success (it aborts and returns), so look.
      if (expected.size > MAX_SINGLE_COPY && (await this.stat(expected.sha256))?.size !== expected.size) {
        throw new NearhubError(
          Code.Unavailable,
          `copying ${tmp} to ${key} at ${this.endpoint} did not complete; nothing was stored, retry the upload`,
        );
      }
      return { created: true };
    } finally {
      // The upload completed, so no parts are left to abort.
      await this.discard(tmp);
    }
  }

  /** Runs `step` after every earlier step for the same digest has settled. */
  private async oneAtATime<T>(sha256: string, step: () => Promise<T>): Promise<T> {
    const previous = this.publishing.get(sha256) ?? Promise.resolve();
    const result = previous.then(step);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.publishing.set(sha256, tail);
    try {
      return await result;
    } finally {
      if (this.publishing.get(sha256) === tail) this.publishing.delete(sha256);
    }
  }

  /**
   * Removes a temporary object. Failures are logged, not thrown: the caller is already throwing
   * the error that matters, or has published the object.
   */
  private async discard(tmp: string): Promise<void> {
    try {
      await this.client.removeObject(this.bucket, tmp);
    } catch (error) {
      this.logger.warn("could not remove a temporary object; the next start-up removes tmp/ objects older than a day", {
        bucket: this.bucket,
        key: tmp,
        error: this.fail(error, `removing ${tmp}`),
      });
    }
  }

  async beginChunked(sessionId: string, size: number): Promise<ChunkedHandle> {
    if (size > MAX_OBJECT) {
      throw new NearhubError(Code.InvalidArgument, `a blob of ${size} bytes is over the 5 TiB S3 object limit`);
    }
    // Under tmp/: a completed but unpublished object (a crash in between) is swept after a day.
    const key = `tmp/upload-${sessionId}`;
    try {
      const uploadId = await this.client.initiateNewMultipartUpload(this.bucket, key, {});
      return { key, uploadId };
    } catch (error) {
      throw this.fail(error, `starting a multipart upload of ${key}`);
    }
  }

  async beginDirect(_sessionId: string, expected: BlobStat): Promise<ChunkedHandle> {
    if (expected.size > MAX_OBJECT) {
      throw new NearhubError(
        Code.InvalidArgument,
        `a blob of ${expected.size} bytes is over the 5 TiB S3 object limit`,
      );
    }
    const key = this.keyOf(expected.sha256);
    try {
      const uploadId = await this.client.initiateNewMultipartUpload(this.bucket, key, {});
      return { key, uploadId, direct: expected.sha256 };
    } catch (error) {
      throw this.fail(error, `starting a multipart upload of ${key}`);
    }
  }

  async writeChunk(
    handle: ChunkedHandle,
    index: number,
    _offset: number,
    bytes: Uint8Array,
    sha256?: string,
  ): Promise<{ etag: string }> {
    const { key, uploadId } = chunkedHandle(handle);
    const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const request = {
      bucketName: this.bucket,
      objectName: key,
      uploadID: uploadId,
      partNumber: index + 1,
      headers: { "Content-Length": String(bytes.byteLength) },
    };
    try {
      // The part is in memory, so it can be sent again.
      const { etag } = await retryTransient(() =>
        sha256
          ? this.putWithDigest(key, `uploadId=${uploadId}&partNumber=${index + 1}`, body, sha256)
          : this.client.uploadPart(request, body),
      );
      return { etag };
    } catch (error) {
      if (error instanceof S3Error && error.code === "NoSuchUpload") {
        throw new NearhubError(
          Code.NotFound,
          `the multipart upload of ${key} is gone at ${this.endpoint} (aborted or expired); start a new upload`,
          { cause: error },
        );
      }
      throw this.fail(error, `uploading part ${index + 1} of ${key}`);
    }
  }

  /**
   * PUTs `body` (an object, or a part when `query` names one). minio signs plain-HTTP requests
   * with the body's sha256, which it computes again; the digest is known and verified, so sign
   * with that one.
   */
  private async putWithDigest(
    objectName: string,
    query: string,
    body: Buffer,
    sha256: string,
  ): Promise<{ etag: string }> {
    const response = await this.client.makeRequestStreamAsync(
      {
        method: "PUT",
        bucketName: this.bucket,
        objectName,
        query,
        headers: { "content-length": String(body.byteLength) },
      },
      body,
      this.client.enableSHA256 ? sha256 : "",
      [200],
      "",
    );
    let text = "";
    for await (const piece of response) text += (piece as Buffer).toString();
    const etag = (response.headers.etag ?? /<ETag>([^<]*)<\/ETag>/.exec(text)?.[1] ?? "").replace(
      /^("|&quot;|&#34;)|("|&quot;|&#34;)$/g,
      "",
    );
    if (!etag) throw new NearhubError(Code.Unavailable, `uploading ${objectName} (${query}): no etag in the answer`);
    return { etag };
  }

  async completeChunked(
    handle: ChunkedHandle,
    expected: BlobStat,
    parts: ChunkPart[],
    received?: { sha256: string },
  ): Promise<{ created: boolean }> {
    const { key, uploadId, direct } = chunkedHandle(handle);
    if (direct !== undefined) return this.completeDirect(key, uploadId, expected, parts, received);
    // A retry after a completion that was cut short finds the assembled object already there.
    let assembled: { etag: string; size: number } | undefined;
    try {
      const s = await this.client.statObject(this.bucket, key);
      assembled = { etag: s.etag, size: s.size };
    } catch (error) {
      if (!isNotFound(error)) throw this.fail(error, `looking up ${key}`);
    }
    if (!assembled) {
      if (await this.stat(expected.sha256)) {
        await this.abortChunked(handle);
        return { created: false };
      }
      try {
        const sorted = [...parts].sort((a, b) => a.index - b.index);
        const done = await this.client.completeMultipartUpload(
          this.bucket,
          key,
          uploadId,
          sorted.map((p) => ({ part: p.index + 1, etag: p.etag })),
        );
        assembled = { etag: done.etag, size: sorted.reduce((n, p) => n + p.size, 0) };
      } catch (error) {
        throw this.fail(error, `completing the multipart upload of ${key}`);
      }
    }
    // Verify what S3 assembled before it becomes visible. The parts are pinned by their etags,
    // so when their verified bytes were hashed in order on receipt that digest stands for the
    // object; otherwise (a restart, parts sent through another replica) read it back.
    let actual = received?.sha256;
    let size = assembled.size;
    if (actual === undefined) {
      const hash = createHash("sha256");
      size = 0;
      try {
        const stream = await this.client.getObject(this.bucket, key);
        for await (const chunk of stream) {
          hash.update(chunk as Buffer);
          size += (chunk as Buffer).byteLength;
        }
      } catch (error) {
        throw this.fail(error, `reading back ${key}`);
      }
      actual = hash.digest("hex");
    }
    if (size !== expected.size || actual !== expected.sha256) {
      await this.discard(key);
      throw new NearhubError(
        Code.InvalidArgument,
        `the assembled upload has sha256 ${actual} and ${size} bytes, not the declared ${expected.sha256} and ${expected.size}; nothing was stored and the session is discarded`,
      );
    }
    return this.oneAtATime(expected.sha256, () => this.publish(expected, key, assembled.etag));
  }

  /**
   * Completes a multipart upload of the blob's own key. The parts cannot be read back before
   * completion, and completion makes them visible, so the digest of the very parts (hashed in
   * order as they were stored, pinned by the etags listed here) must be given and must match:
   * otherwise the upload is aborted and nothing appears. When the blob is already stored (another
   * session, or this one whose completion was cut short after S3 had completed it) the upload is
   * aborted and the stored object, verified when it was written, stays as it was.
   */
  private async completeDirect(
    key: string,
    uploadId: string,
    expected: BlobStat,
    parts: ChunkPart[],
    received: { sha256: string } | undefined,
  ): Promise<{ created: boolean }> {
    const abort = () => this.abortChunked({ key, uploadId, direct: expected.sha256 });
    if (received === undefined) {
      throw new NearhubError(
        Code.Internal,
        `the multipart upload of ${key} can only be completed with the digest of its parts, which was not given; nothing was stored`,
      );
    }
    const size = parts.reduce((n, p) => n + p.size, 0);
    if (size !== expected.size || received.sha256 !== expected.sha256) {
      await abort();
      throw new NearhubError(
        Code.InvalidArgument,
        `the assembled upload has sha256 ${received.sha256} and ${size} bytes, not the declared ${expected.sha256} and ${expected.size}; nothing was stored and the session is discarded`,
      );
    }
    return this.oneAtATime(expected.sha256, async () => {
      if (await this.stat(expected.sha256)) {
        await abort();
        return { created: false };
      }
      const sorted = [...parts].sort((a, b) => a.index - b.index);
      try {
        await this.client.completeMultipartUpload(
          this.bucket,
          key,
          uploadId,
          sorted.map((p) => ({ part: p.index + 1, etag: p.etag })),
        );
      } catch (error) {
        // A completion that S3 carried out but whose answer was lost, then retried.
        if (error instanceof S3Error && error.code === "NoSuchUpload" && (await this.stat(expected.sha256))) {
          return { created: false };
        }
        throw this.fail(error, `completing the multipart upload of ${key}`);
      }
      return { created: true };
    });
  }

  async abortChunked(handle: ChunkedHandle): Promise<void> {
    const { key, uploadId, direct } = chunkedHandle(handle);
    const steps: Array<readonly [string, () => Promise<void>]> = [
      [`aborting the multipart upload of ${key}`, () => this.client.abortMultipartUpload(this.bucket, key, uploadId)],
    ];
    // A direct upload's key is the blob's: whatever is there was verified, maybe by another session.
    if (direct === undefined) steps.push([`removing ${key}`, () => this.client.removeObject(this.bucket, key)]);
    for (const [action, step] of steps) {
      try {
        await step();
      } catch (error) {
        // s3rver answers AbortMultipartUpload with MethodNotAllowed; a lifecycle rule covers the rest.
        this.logger.debug("best-effort cleanup of a chunked upload failed", { key, error: this.fail(error, action) });
      }
    }
  }

  async *list(): AsyncIterable<BlobStat & { modifiedAt: number }> {
    try {
      for await (const item of this.client.listObjectsV2(this.bucket, "sha256/", true)) {
        const { name, size, lastModified } = item as { name?: string; size?: number; lastModified?: Date };
        const sha = name?.split("/").at(-1) ?? "";
        if (SHA256.test(sha)) yield { sha256: sha, size: size ?? 0, modifiedAt: lastModified?.getTime() ?? 0 };
      }
    } catch (error) {
      throw this.fail(error, "listing sha256/");
    }
  }

  async remove(sha256: string): Promise<boolean> {
    if (!(await this.stat(sha256))) return false;
    try {
      await this.client.removeObject(this.bucket, this.keyOf(sha256));
    } catch (error) {
      throw this.fail(error, `removing blob ${sha256}`);
    }
    return true;
  }

  /** Removes `tmp/` objects old enough to belong to no live upload (a crash left them). */
  private async sweepTemporaries(): Promise<void> {
    const cutoff = Date.now() - STALE_TMP_MS;
    try {
      const stale: string[] = [];
      for await (const item of this.client.listObjectsV2(this.bucket, "tmp/", true)) {
        const { name, lastModified } = item as { name?: string; lastModified?: Date };
        if (name && lastModified && lastModified.getTime() < cutoff) stale.push(name);
      }
      for (const name of stale) await this.client.removeObject(this.bucket, name);
    } catch (error) {
      this.logger.warn("could not sweep stale temporary objects; uploads are unaffected", {
        bucket: this.bucket,
        error: this.fail(error, "listing tmp/"),
      });
    }
  }

  async *get(sha256: string, offset: number, length: number | undefined): AsyncIterable<Uint8Array> {
    if (length === 0) return;
    let stream: Readable;
    try {
      // minio reads a length of 0 as "to the end".
      stream = await this.client.getPartialObject(this.bucket, this.keyOf(sha256), offset, length ?? 0);
    } catch (error) {
      if (isNotFound(error)) throw new NearhubError(Code.NotFound, `blob ${sha256} is not stored`, { cause: error });
      throw this.fail(error, `reading blob ${sha256}`);
    }
    // Some servers read `bytes=0-0` as "from 0 to the end"; never hand out more than asked for.
    let left = length ?? Infinity;
    try {
      for await (const chunk of stream) {
        const bytes = chunk as Buffer;
        if (bytes.byteLength >= left) {
          yield bytes.subarray(0, left);
          return;
        }
        left -= bytes.byteLength;
        yield bytes;
      }
    } catch (error) {
      throw this.fail(error, `reading blob ${sha256}`);
    } finally {
      stream.destroy();
    }
  }

  /**
   * A URL that lets anyone holding it download the blob directly from S3 for `expirySeconds`
   * (at most seven days); signed locally, without a request. The edge uses it to send large
   * downloads to S3 instead of through the service.
   */
  async presignGet(sha256: string, expirySeconds: number): Promise<string> {
    if (!SHA256.test(sha256)) {
      throw new NearhubError(
        Code.InvalidArgument,
        `${JSON.stringify(sha256.slice(0, 80))} is not a sha256: expected 64 lower-case hex characters`,
      );
    }
    if (!Number.isInteger(expirySeconds) || expirySeconds < 1 || expirySeconds > MAX_PRESIGN_SECONDS) {
      throw new NearhubError(
        Code.InvalidArgument,
        `expiry ${expirySeconds} s is outside 1..${MAX_PRESIGN_SECONDS} s (S3 signs for at most seven days)`,
      );
    }
    try {
      return await this.client.presignedGetObject(this.bucket, this.keyOf(sha256), expirySeconds);
    } catch (error) {
      throw this.fail(error, `signing a URL for blob ${sha256}`);
    }
  }

  private noSuchBucket(): NearhubError {
    return new NearhubError(
      Code.FailedPrecondition,
      `bucket ${this.bucket} does not exist at ${this.endpoint}; create it (mc mb <alias>/${this.bucket}) or set NEARHUB_S3_BUCKET`,
    );
  }

  /** A NearhubError for a failed S3 call, naming the endpoint and what to check. */
  private fail(error: unknown, action: string): NearhubError {
    if (error instanceof NearhubError) return error;
    const cause = { cause: error };
    if (error instanceof S3Error) {
      const s3Code = error.code ?? "an error";
      switch (error.code) {
        case "NoSuchBucket":
          return new NearhubError(Code.FailedPrecondition, this.noSuchBucket().rawMessage, cause);
        case "AccessDenied":
        case "InvalidAccessKeyId":
        case "SignatureDoesNotMatch":
          return new NearhubError(
            Code.PermissionDenied,
            `${action}: ${this.endpoint} answered ${s3Code}; check NEARHUB_S3_ACCESS_KEY, NEARHUB_S3_SECRET_KEY and the key's policy on bucket ${this.bucket}`,
            cause,
          );
        case "SlowDown":
        case "ServiceUnavailable":
        case "InternalError":
        case "RequestTimeout":
          return new NearhubError(
            Code.Unavailable,
            `${action}: ${this.endpoint} answered ${s3Code}; retry later`,
            cause,
          );
        default:
          return new NearhubError(
            Code.Internal,
            `${action}: ${this.endpoint} answered ${s3Code}: ${error.message}`,
            cause,
          );
      }
    }
    const systemCode = (error as { code?: unknown } | undefined)?.code;
    if (typeof systemCode === "string" && /CERT|SSL|TLS|EPROTO/.test(systemCode)) {
      return new NearhubError(
        Code.Unavailable,
        `${action}: TLS with ${this.endpoint} failed (${(error as Error).message.trim()}); check whether the server speaks http rather than https, and if it uses a private CA, point NODE_EXTRA_CA_CERTS at it`,
        cause,
      );
    }
    const mapped = NearhubError.from(error, Code.Internal);
    if (mapped.code === Code.Unavailable) {
      return new NearhubError(
        Code.Unavailable,
        `${action}: S3 endpoint ${this.endpoint} is unreachable (${mapped.rawMessage}); check NEARHUB_S3_ENDPOINT and that the server is running`,
        cause,
      );
    }
    return new NearhubError(mapped.code, `${action} at ${this.endpoint}: ${mapped.rawMessage}`, cause);
  }
}

/** `direct` is the blob's sha256 when the upload is of the blob's own key ({@link S3BlobStore.beginDirect}). */
function chunkedHandle(handle: ChunkedHandle): { key: string; uploadId: string; direct?: string } {
  const { key, uploadId, direct } = handle;
  const valid =
    direct === undefined
      ? key?.startsWith("tmp/upload-")
      : SHA256.test(direct) && key === `sha256/${direct.slice(0, 2)}/${direct.slice(2, 4)}/${direct}`;
  if (!valid || !uploadId) {
    throw new NearhubError(Code.Internal, `bad chunked-upload handle ${JSON.stringify(handle)}`);
  }
  return direct === undefined ? { key: key!, uploadId } : { key: key!, uploadId, direct };
}

function isNotFound(error: unknown): boolean {
  return error instanceof S3Error && (error.code === "NotFound" || error.code === "NoSuchKey");
}

/**
 * http(s).request that gives up on a connection not made within `ms`: a firewalled endpoint
 * otherwise hangs each call for the kernel's two minutes. Only connecting is timed, so a slow
 * download or a long server-side copy is never cut.
 */
function withConnectTimeout(
  base: typeof http | typeof https,
  endpoint: string,
  ms: number,
): Pick<typeof http, "request"> {
  const request = (
    options: http.RequestOptions,
    callback?: (response: http.IncomingMessage) => void,
  ): http.ClientRequest => {
    const req = base.request(options, callback);
    req.once("socket", (socket) => {
      if (!socket.connecting) return;
      const timer = setTimeout(() => {
        req.destroy(Object.assign(new Error(`no connection to ${endpoint} within ${ms} ms`), { code: "ETIMEDOUT" }));
      }, ms);
      timer.unref();
      socket.once("connect", () => clearTimeout(timer));
      socket.once("close", () => clearTimeout(timer));
    });
    return req;
  };
  return { request: request as typeof http.request };
}

/**
 * Runs an idempotent S3 request, again after a short backoff when the answer was a 5xx or
 * throttling (S3 does that now and then; s3rver does under concurrent writes to one key).
 */
async function retryTransient<T>(request: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await request();
    } catch (error) {
      if (attempt >= 4 || !isTransientS3Error(error)) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attempt));
    }
  }
}

/** A 5xx or throttling answer that a retry of the same request may get past. */
function isTransientS3Error(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  if (
    typeof code === "string" &&
    ["InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"].includes(code)
  ) {
    return true;
  }
  return /Retryable HTTP status: 5\d\d|status code 5\d\d/.test((error as Error)?.message ?? "");
}
