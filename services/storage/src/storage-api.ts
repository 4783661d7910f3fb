import { Code, NearhubError, publishAudit, type Bus, type CallContext, type ServiceImpl } from "@nearhub/platform";
import { blobStored } from "@nearhub/proto/events";
import type { StorageService } from "@nearhub/proto/storage";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { SHA256, type BlobStore } from "./blob-store.js";
import type { UploadSessions } from "./upload-sessions.js";

/** The largest GetBlob message; gRPC's default receive limit is 4 MiB, so stay under it. */
export const MAX_CHUNK = 4 * 1024 * 1024 - 1024;
/** The smallest GetBlob message but the last: the backend's smaller pieces are gathered. */
const MIN_MESSAGE = 1024 * 1024;
const MAX_HAS = 10_000;

function checkSha(sha256: string): string {
  if (!SHA256.test(sha256)) {
    throw new NearhubError(
      Code.InvalidArgument,
      `${JSON.stringify(sha256.slice(0, 80))} is not a sha256: expected 64 lower-case hex characters`,
    );
  }
  return sha256;
}

/** nearhub.storage.v1.StorageService over a blob backend. */
export function storageApi(store: BlobStore, bus: Bus, sessions: UploadSessions): ServiceImpl<typeof StorageService> {
  const announce = async (sha: string, size: number, ctx: CallContext, action: string) => {
    // Both are durable before the call answers; they do not depend on each other.
    await Promise.all([
      bus.publishEvent(blobStored, { blob: { sha256: sha, size: BigInt(size) } }, { id: `blob.stored:${sha}` }),
      publishAudit(bus, "storage", { action, resource: `sha256:${sha}`, details: { size: String(size) } }, ctx),
    ]);
  };
  return {
    async statBlob(request) {
      const sha = checkSha(request.sha256);
      const s = await store.stat(sha);
      if (!s) throw new NearhubError(Code.NotFound, `blob ${sha} is not stored`);
      return { blob: { sha256: s.sha256, size: BigInt(s.size) } };
    },

    async hasBlobs(request) {
      if (request.sha256.length > MAX_HAS) {
        throw new NearhubError(
          Code.InvalidArgument,
          `at most ${MAX_HAS} digests per call; got ${request.sha256.length}`,
        );
      }
      const shas = [...new Set(request.sha256.map(checkSha))];
      const present: string[] = [];
      for (let i = 0; i < shas.length; i += 64) {
        const batch = shas.slice(i, i + 64);
        const stats = await Promise.all(batch.map((sha) => store.stat(sha)));
        batch.forEach((sha, j) => stats[j] && present.push(sha));
      }
      return { present };
    },

    async putBlob(requests, ctx) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      const header = first.done ? undefined : first.value.part;
      if (header?.case !== "header" || !header.value) {
        throw new NearhubError(
          Code.InvalidArgument,
          "the first PutBlob message must carry the header (sha256 and size)",
        );
      }
      const sha = checkSha(header.value.sha256);
      const size = Number(header.value.size);
      if (!Number.isSafeInteger(size)) throw new NearhubError(Code.InvalidArgument, "size is too large");
      const chunks = (async function* () {
        for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
          const part = next.value.part;
          if (part.case !== "chunk")
            throw new NearhubError(Code.InvalidArgument, "only the first PutBlob message may carry a header");
          yield part.value;
        }
      })();
      const { created } = await store.put({ sha256: sha, size }, chunks, ctx.signal);
      if (created) await announce(sha, size, ctx, "blob.put");
      return { blob: { sha256: sha, size: BigInt(size) }, created };
    },

    async *getBlob(request, ctx) {
      const sha = checkSha(request.sha256);
      const s = await store.stat(sha);
      if (!s) throw new NearhubError(Code.NotFound, `blob ${sha} is not stored`);
      if (request.offset > BigInt(Number.MAX_SAFE_INTEGER) || request.length > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new NearhubError(
          Code.OutOfRange,
          `offset ${request.offset} / length ${request.length} is past the end of the ${s.size}-byte blob`,
        );
      }
      const offset = Number(request.offset);
      if (offset > s.size) {
        throw new NearhubError(Code.OutOfRange, `offset ${offset} is past the end of the ${s.size}-byte blob`);
      }
      const remaining = s.size - offset;
      const length = request.length === 0n ? remaining : Math.min(Number(request.length), remaining);
      if (length === 0) return;
      // Each message costs a fixed amount on both ends (framing, a write of the client's): the
      // backend's pieces (socket-sized from S3) go out gathered into messages of at least
      // MIN_MESSAGE bytes, large ones as they are.
      let batch: Uint8Array[] = [];
      let batched = 0;
      for await (const chunk of store.get(sha, offset, length)) {
        if (ctx.aborted) return;
        let bytes = chunk;
        if (batched > 0 || chunk.byteLength < MIN_MESSAGE) {
          batch.push(chunk);
          batched += chunk.byteLength;
          if (batched < MIN_MESSAGE) continue;
          bytes = Buffer.concat(batch, batched);
          batch = [];
          batched = 0;
        }
        for (let i = 0; i < bytes.byteLength; i += MAX_CHUNK) {
          yield { chunk: bytes.subarray(i, Math.min(i + MAX_CHUNK, bytes.byteLength)) };
        }
      }
      if (batched > 0 && !ctx.aborted) yield { chunk: batch.length === 1 ? batch[0]! : Buffer.concat(batch, batched) };
    },

    async presignGet(request) {
      const sha = checkSha(request.sha256);
      if (!store.presignGet) {
        throw new NearhubError(
          Code.FailedPrecondition,
          "this storage uses the folder backend, which has no presigned URLs; read the blob with GetBlob",
        );
      }
      const expiry = request.expirySeconds === 0 ? 3600 : request.expirySeconds;
      if (!(await store.stat(sha))) throw new NearhubError(Code.NotFound, `blob ${sha} is not stored`);
      const url = await store.presignGet(sha, expiry);
      return { url, expiresAt: timestampFromMs(Date.now() + expiry * 1000) };
    },

    async startUpload(request) {
      if (request.size > BigInt(Number.MAX_SAFE_INTEGER) || request.chunkSize > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new NearhubError(Code.InvalidArgument, "size or chunk_size is too large");
      }
      const { record } = await sessions.start(request.sha256, Number(request.size), Number(request.chunkSize));
      if (!record) return { alreadyStored: true };
      return { session: await sessions.describe(record) };
    },

    async uploadChunk(requests, ctx) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      const header = first.done ? undefined : first.value.part;
      if (header?.case !== "header" || !header.value) {
        throw new NearhubError(
          Code.InvalidArgument,
          "the first UploadChunk message must carry the header (session_id, index, sha256)",
        );
      }
      const pieces = (async function* () {
        for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
          const part = next.value.part;
          if (part.case !== "data")
            throw new NearhubError(Code.InvalidArgument, "only the first UploadChunk message may carry a header");
          yield part.value;
        }
      })();
      const { index, sessionId, sha256 } = header.value;
      const result = await sessions.putChunk(sessionId, index, sha256, pieces, ctx.signal);
      return { index, stored: result.stored, receivedCount: result.receivedCount };
    },

    async getUploadStatus(request) {
      return { session: await sessions.describe(await sessions.get(request.sessionId)) };
    },

    async completeUpload(request, ctx) {
      const { record, created } = await sessions.complete(request.sessionId);
      if (created) await announce(record.sha256, record.size, ctx, "blob.upload");
      return { blob: { sha256: record.sha256, size: BigInt(record.size) }, created };
    },

    async abortUpload(request) {
      return { aborted: await sessions.abort(request.sessionId) };
    },
  };
}
