import { Code, NearhubError, publishAudit, type Bus, type ServiceImpl } from "@nearhub/platform";
import { blobStored } from "@nearhub/proto/events";
import { StorageService, type PutBlobRequest } from "@nearhub/proto/storage";
import { SHA256, type BlobStore } from "./blob-store.js";

/** The largest GetBlob message; gRPC's default receive limit is 4 MiB, so stay under it. */
export const MAX_CHUNK = 4 * 1024 * 1024 - 1024;
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
export function storageApi(store: BlobStore, bus: Bus): ServiceImpl<typeof StorageService> {
  return {
    async statBlob(request) {
      const sha = checkSha(request.sha256);
      const s = await store.stat(sha);
      if (!s) throw new NearhubError(Code.NotFound, `blob ${sha} is not stored`);
      return { blob: { sha256: s.sha256, size: BigInt(s.size) } };
    },

    async hasBlobs(request) {
      if (request.sha256.length > MAX_HAS) {
        throw new NearhubError(Code.InvalidArgument, `at most ${MAX_HAS} digests per call; got ${request.sha256.length}`);
      }
      const shas = [...new Set(request.sha256.map(checkSha))];
      const present: string[] = [];
      for (const sha of shas) if (await store.stat(sha)) present.push(sha);
      return { present };
    },

    async putBlob(requests, ctx) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      const header = first.done ? undefined : (first.value as PutBlobRequest).part;
      if (header?.case !== "header" || !header.value) {
        throw new NearhubError(Code.InvalidArgument, "the first PutBlob message must carry the header (sha256 and size)");
      }
      const sha = checkSha(header.value.sha256);
      const size = Number(header.value.size);
      if (!Number.isSafeInteger(size)) throw new NearhubError(Code.InvalidArgument, "size is too large");
      const chunks = (async function* () {
        for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
          const part = (next.value as PutBlobRequest).part;
          if (part.case !== "chunk") throw new NearhubError(Code.InvalidArgument, "only the first PutBlob message may carry a header");
          yield part.value;
        }
      })();
      const { created } = await store.put({ sha256: sha, size }, chunks, ctx.signal);
      if (created) {
        await bus.publishEvent(blobStored, { blob: { sha256: sha, size: BigInt(size) } }, { id: `blob.stored:${sha}` });
        await publishAudit(bus, "storage", { action: "blob.put", resource: `sha256:${sha}`, details: { size: String(size) } }, ctx);
      }
      return { blob: { sha256: sha, size: BigInt(size) }, created };
    },

    async *getBlob(request, ctx) {
      const sha = checkSha(request.sha256);
      const s = await store.stat(sha);
      if (!s) throw new NearhubError(Code.NotFound, `blob ${sha} is not stored`);
      const offset = Number(request.offset);
      if (offset > s.size) {
        throw new NearhubError(Code.OutOfRange, `offset ${offset} is past the end of the ${s.size}-byte blob`);
      }
      const remaining = s.size - offset;
      const length = request.length === 0n ? remaining : Math.min(Number(request.length), remaining);
      if (length === 0) return;
      for await (const chunk of store.get(sha, offset, length)) {
        if (ctx.signal.aborted) return;
        for (let i = 0; i < chunk.byteLength; i += MAX_CHUNK) {
          yield { chunk: chunk.subarray(i, Math.min(i + MAX_CHUNK, chunk.byteLength)) };
        }
      }
    },
  };
}
