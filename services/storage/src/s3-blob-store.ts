import { createHash, randomUUID } from "node:crypto";
import http from "node:http";
import https from "node:https";
import { Readable } from "node:stream";
import { Code, NearhubError, silentLogger, type Logger } from "@nearhub/platform";
import { Client, CopyDestinationOptions, CopySourceOptions, S3Error } from "minio";
import { SHA256, type BlobStat, type BlobStore, type ChunkPart, type ChunkedHandle } from "./blob-store.js";
import type { S3Settings } from "./config.js";

/** S3 copies an object of at most 5 GiB in one request; larger ones take a multipart copy. */
const MAX_SINGLE_COPY = 5 * 1024 ** 3;
/** The largest S3 object. */
const MAX_OBJECT = 5 * 1024 ** 4;
/** A temporary object this old belongs to no live upload: a crash or a failed cleanup left it. */
const STALE_TMP_MS = 24 * 60 * 60 * 1000;
/** The longest presigned URL S3 signs (SigV4): seven days. */
const MAX_PRESIGN_SECONDS = 7 * 24 * 60 * 60;

/** Options of {@link S3BlobStore}. */
export interface S3BlobStoreOptions extends S3Settings {
  /** Where cleanup failures go (they never replace the error being thrown). */
  logger?: Logger;
  /** How long to wait for a TCP connection to the endpoint; 10 s by default. */
  connectTimeoutMs?: number;
}

/**
 * Blobs in an S3 bucket (MinIO, AWS, any S3 protocol server): `sha256/ab/cd/<sha256>`. An
 * upload streams to `tmp/<uuid>` while being hashed, and is copied server-side to its key
 * only when sha256 and size match, so a reader never sees a partial or wrong blob; a crash
 * leaves only a temporary object, which {@link check} at the next start-up removes once it is
 * a day old.
 *
 * Memory per upload, held by the minio client: a blob of up to 64 MiB whole (it is sent in one
 * PUT); for larger blobs up to three parts (the one being sent, one ready, one filling) of
 * 64 MiB, more for blobs over 640 GB. Never the whole of a large blob.
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
    const tmp = `tmp/${randomUUID()}`;
    // Why the bytes were refused. minio's multipart upload does not listen for errors of its
    // body (it would wait forever), so the body ends cleanly and this is thrown once S3 settled.
    let refused: NearhubError | undefined;
    const verified = (async function* (): AsyncGenerator<Uint8Array> {
      const hash = createHash("sha256");
      let received = 0;
      try {
        for await (const chunk of chunks) {
          signal?.throwIfAborted();
          received += chunk.byteLength;
          if (received > expected.size) {
            throw new NearhubError(
              Code.InvalidArgument,
              `upload is larger than the declared ${expected.size} bytes; nothing was stored`,
            );
          }
          hash.update(chunk);
          yield chunk;
        }
        signal?.throwIfAborted();
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
      } catch (error) {
        refused = NearhubError.from(error);
      }
    })();
    let etag: string;
    try {
      ({ etag } = await this.upload(tmp, expected.size, verified));
    } catch (error) {
      await this.discard(tmp, expected.size);
      throw refused ?? this.fail(error, `uploading blob ${expected.sha256} to ${tmp}`);
    }
    if (refused !== undefined) {
      await this.discard(tmp, expected.size);
      throw refused;
    }
    return this.oneAtATime(expected.sha256, () => this.publish(expected, tmp, etag));
  }

  /** Streams `bytes` (declared to be `size` long) to the object `key`. */
  private async upload(key: string, size: number, bytes: AsyncGenerator<Uint8Array>): Promise<{ etag: string }> {
    if (size === 0) {
      // minio sends an empty object without reading its body; read the caller's chunks here,
      // where any byte is one too many.
      for await (const chunk of bytes) void chunk;
      return this.client.putObject(this.bucket, key, Buffer.alloc(0), 0);
    }
    const body = Readable.from(bytes, { objectMode: false });
    try {
      return await this.client.putObject(this.bucket, key, body, size);
    } finally {
      // Stops reading the caller's chunks when S3 failed before taking them all.
      body.destroy();
    }
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
      await this.discard(tmp, 0);
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
   * Removes a temporary object and, when `declaredSize` made minio upload in parts, the parts
   * of an upload cut short (no object shows them; only an abort frees them). Failures are
   * logged, not thrown: the caller is already throwing the error that matters.
   */
  private async discard(tmp: string, declaredSize: number): Promise<void> {
    const steps: Array<[string, () => Promise<void>]> = [
      [`removing ${tmp}`, () => this.client.removeObject(this.bucket, tmp)],
    ];
    if (declaredSize > this.client.calculatePartSize(declaredSize)) {
      steps.push([
        `aborting the multipart upload of ${tmp}`,
        async () => {
          const uploadId = await this.client.findUploadId(this.bucket, tmp);
          if (uploadId) await this.client.abortMultipartUpload(this.bucket, tmp, uploadId);
        },
      ]);
    }
    for (const [action, step] of steps) {
      try {
        await step();
      } catch (error) {
        this.logger.warn(
          "could not clean up after an upload; the next start-up removes tmp/ objects older than a day, and a bucket lifecycle rule should abort incomplete multipart uploads",
          { bucket: this.bucket, key: tmp, error: this.fail(error, action) },
        );
      }
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
        sha256 ? this.uploadPartWithDigest(request, body, sha256) : this.client.uploadPart(request, body),
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
   * minio's uploadPart signs plain-HTTP requests with the body's sha256, which it computes
   * again; the chunk's digest is known and verified, so sign with that one.
   */
  private async uploadPartWithDigest(
    request: {
      bucketName: string;
      objectName: string;
      uploadID: string;
      partNumber: number;
      headers: Record<string, string>;
    },
    body: Buffer,
    sha256: string,
  ): Promise<{ etag: string }> {
    const response = await this.client.makeRequestStreamAsync(
      {
        method: "PUT",
        bucketName: request.bucketName,
        objectName: request.objectName,
        query: `uploadId=${request.uploadID}&partNumber=${request.partNumber}`,
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
    if (!etag)
      throw new NearhubError(
        Code.Unavailable,
        `uploading part ${request.partNumber} of ${request.objectName}: no etag in the answer`,
      );
    return { etag };
  }

  async completeChunked(
    handle: ChunkedHandle,
    expected: BlobStat,
    parts: ChunkPart[],
    received?: { sha256: string },
  ): Promise<{ created: boolean }> {
    const { key, uploadId } = chunkedHandle(handle);
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
      await this.discard(key, 0);
      throw new NearhubError(
        Code.InvalidArgument,
        `the assembled upload has sha256 ${actual} and ${size} bytes, not the declared ${expected.sha256} and ${expected.size}; nothing was stored and the session is discarded`,
      );
    }
    return this.oneAtATime(expected.sha256, () => this.publish(expected, key, assembled.etag));
  }

  async abortChunked(handle: ChunkedHandle): Promise<void> {
    const { key, uploadId } = chunkedHandle(handle);
    for (const [action, step] of [
      [`aborting the multipart upload of ${key}`, () => this.client.abortMultipartUpload(this.bucket, key, uploadId)],
      [`removing ${key}`, () => this.client.removeObject(this.bucket, key)],
    ] as const) {
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

function chunkedHandle(handle: ChunkedHandle): { key: string; uploadId: string } {
  const { key, uploadId } = handle;
  if (!key?.startsWith("tmp/upload-") || !uploadId) {
    throw new NearhubError(Code.Internal, `bad chunked-upload handle ${JSON.stringify(handle)}`);
  }
  return { key, uploadId };
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
