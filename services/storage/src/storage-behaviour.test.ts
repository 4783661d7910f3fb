import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { open, readFile, readdir, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, NearhubError, createClient, parseEnv, type Client, type ServiceHost } from "@nearhub/platform";
import { RefKind, RegistryService, RepoKind } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import {
  adminAuth,
  deleteNamespace,
  eventually,
  nats,
  s3,
  serviceEnv,
  tempDir,
  uniqueNamespace,
  type S3Handle,
} from "@nearhub/testing";
import { storageEnv } from "./config.js";
import { FsBlobStore } from "./fs-blob-store.js";
import { startStorage } from "./service.js";
import { PIECE, downloadBlob, uploadFile } from "./transfer-client.js";

const MiB = 1024 * 1024;

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function rejectsWith(promise: Promise<unknown>, code: Code, message: RegExp): Promise<NearhubError> {
  const error = await promise.then(
    () => assert.fail(`expected ${Code[code]} matching ${message}, but it succeeded`),
    (e: unknown) => e,
  );
  assert.ok(error instanceof NearhubError, `expected a NearhubError, got ${String(error)}`);
  assert.equal(Code[error.code], Code[code], error.message);
  assert.match(error.rawMessage, message);
  return error;
}

type Storage = Client<typeof StorageService>;

function chunkRequests(sessionId: string, index: number, bytes: Uint8Array, declaredSha = sha256(bytes)) {
  return (async function* () {
    yield { part: { case: "header" as const, value: { sessionId, index, sha256: declaredSha } } };
    for (let p = 0; p < bytes.byteLength; p += PIECE)
      yield { part: { case: "data" as const, value: bytes.subarray(p, Math.min(p + PIECE, bytes.byteLength)) } };
  })();
}

async function put(client: Storage, bytes: Uint8Array): Promise<string> {
  const sha = sha256(bytes);
  await client.putBlob(
    (async function* () {
      yield { part: { case: "header" as const, value: { sha256: sha, size: BigInt(bytes.byteLength) } } };
      yield { part: { case: "chunk" as const, value: bytes } };
    })(),
  );
  return sha;
}

async function read(client: Storage, sha: string, offset = 0n, length = 0n): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const m of client.getBlob({ sha256: sha, offset, length })) parts.push(m.chunk);
  return Buffer.concat(parts);
}

/** Event subjects published in the namespace's EVENTS stream. */
async function eventSubjects(natsUrl: string, ns: string): Promise<string[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(`${ns.toUpperCase()}_EVENTS`, { subjects_filter: ">" });
    return Object.keys(info.state.subjects ?? {});
  } finally {
    await nc.close();
  }
}

const backends: Array<{ name: string; env: (s3h: S3Handle | undefined) => Promise<Record<string, string>> }> = [
  { name: "fs", env: async () => ({ NEARHUB_BLOB_BACKEND: "fs" }) },
  {
    name: "s3",
    env: async (h) => {
      assert.ok(h);
      return {
        NEARHUB_BLOB_BACKEND: "s3",
        NEARHUB_S3_ENDPOINT: h.endpoint,
        NEARHUB_S3_BUCKET: await h.createBucket(),
        NEARHUB_S3_REGION: h.region,
        NEARHUB_S3_ACCESS_KEY: h.accessKey,
        NEARHUB_S3_SECRET_KEY: h.secretKey,
      };
    },
  },
];

for (const backend of backends) {
  describe(`storage behaviour on the ${backend.name} backend`, () => {
    let natsUrl: string;
    const ns = uniqueNamespace();
    let dir: Awaited<ReturnType<typeof tempDir>>;
    let host: ServiceHost;
    let s3h: S3Handle | undefined;
    let client: Storage;
    let registry: Client<typeof RegistryService>;
    let env: Record<string, string>;

    before(async () => {
      natsUrl = (await nats()).url;
      dir = await tempDir();
      if (backend.name === "s3") s3h = await s3();
      env = serviceEnv(natsUrl, ns, dir.path, await backend.env(s3h));
      host = await startStorage(parseEnv("storage", storageEnv, env));
      client = createClient(StorageService, `127.0.0.1:${host.grpcPort}`, {
        metadata: adminAuth(ns),
        maxMessageBytes: 16 * MiB,
        timeoutMs: 60_000,
      });
      registry = createClient(RegistryService, `127.0.0.1:${host.grpcPort}`, { metadata: adminAuth(ns) });
    });

    after(async () => {
      client?.$close();
      registry?.$close();
      await host?.stop();
      await deleteNamespace(natsUrl, ns);
      await s3h?.stop();
      await dir?.cleanup();
    });

    test("range reads at 0, at the last byte, at the end, and past it", async () => {
      const bytes = randomBytes(9 * MiB + 5);
      const sha = await put(client, bytes);
      assert.deepEqual(await read(client, sha, 0n, 1n), bytes.subarray(0, 1));
      assert.deepEqual(await read(client, sha, BigInt(bytes.length - 1), 1n), bytes.subarray(bytes.length - 1));
      assert.deepEqual(await read(client, sha, BigInt(bytes.length - 1), 0n), bytes.subarray(bytes.length - 1));
      assert.equal((await read(client, sha, BigInt(bytes.length), 0n)).length, 0);
      // A length past the end is cut at the end.
      assert.deepEqual(await read(client, sha, 5n, BigInt(bytes.length * 2)), bytes.subarray(5));
      assert.equal(sha256(await read(client, sha)), sha);
      await rejectsWith(
        read(client, sha, BigInt(bytes.length + 1)),
        Code.OutOfRange,
        /past the end of the 9437189-byte blob/,
      );
      await rejectsWith(read(client, sha, 2n ** 63n), Code.OutOfRange, /past the end/);
      await rejectsWith(read(client, "a".repeat(64)), Code.NotFound, /is not stored/);
      await rejectsWith(read(client, "../../etc/passwd"), Code.InvalidArgument, /is not a sha256/);
    });

    test("uploadFile and downloadBlob round-trip a file, verified while it downloads", async () => {
      const bytes = randomBytes(13 * MiB + 7);
      const source = join(dir.path, `source-${randomUUID()}`);
      await writeFile(source, bytes);
      const up = await uploadFile(client, source, { chunkSize: 5 * MiB, parallel: 3 });
      assert.equal(up.sha256, sha256(bytes));
      assert.equal(up.chunksSent, 3);
      // Odd range sizes, several in flight: ranges finish out of order and wait to be hashed.
      const dest = join(dir.path, `dest-${randomUUID()}`);
      const down = await downloadBlob(client, up.sha256, bytes.length, dest, { rangeSize: MiB + 3, parallel: 4 });
      assert.equal(down.rangesFetched, 13);
      assert.ok((await readFile(dest)).equals(bytes));
    });

    test("downloadBlob writes whole-block ranges with O_DIRECT or through the cache, the same bytes, and resumes", async () => {
      const bytes = randomBytes(9 * MiB + 4096 + 5);
      const source = join(dir.path, `source-${randomUUID()}`);
      await writeFile(source, bytes);
      const up = await uploadFile(client, source, { chunkSize: 5 * MiB, parallel: 2 });
      // Ranges of whole blocks (the direct path) and a last range that ends mid-block.
      for (const directIo of [true, false]) {
        const dest = join(dir.path, `dest-${randomUUID()}`);
        const down = await downloadBlob(client, up.sha256, bytes.length, dest, {
          rangeSize: 2 * MiB,
          parallel: 3,
          directIo,
        });
        assert.equal(down.rangesFetched, 5);
        assert.ok((await readFile(dest)).equals(bytes), `directIo ${directIo}`);
      }
      // Interrupted after some ranges: the rerun fetches only the rest, verified from the disk.
      const dest = join(dir.path, `dest-${randomUUID()}`);
      const stop = new AbortController();
      let seen = 0;
      await assert.rejects(
        downloadBlob(client, up.sha256, bytes.length, dest, {
          rangeSize: 2 * MiB,
          parallel: 1,
          signal: stop.signal,
          onProgress: (n) => {
            seen += n;
            if (seen >= 4 * MiB) stop.abort(new Error("interrupted"));
          },
        }),
      );
      const rerun = await downloadBlob(client, up.sha256, bytes.length, dest, { rangeSize: 2 * MiB, parallel: 2 });
      assert.ok(rerun.rangesSkipped >= 2, `skipped ${rerun.rangesSkipped}`);
      assert.equal(rerun.rangesSkipped + rerun.rangesFetched, 5);
      assert.ok((await readFile(dest)).equals(bytes));
    });

    test("downloadBlob of a wrong size fails with DATA_LOSS and leaves no file", async () => {
      const bytes = randomBytes(3 * MiB);
      const source = join(dir.path, `source-${randomUUID()}`);
      await writeFile(source, bytes);
      const up = await uploadFile(client, source);
      const dest = join(dir.path, `dest-${randomUUID()}`);
      // One block short: whole-block ranges, written directly, whose digest cannot match.
      await rejectsWith(
        downloadBlob(client, up.sha256, bytes.length - 4096, dest, { rangeSize: MiB, attempts: 1 }),
        Code.DataLoss,
        /hashes to/,
      );
      await assert.rejects(readFile(dest), /ENOENT/);
      await assert.rejects(readFile(`${dest}.nearhub-part`), /ENOENT/);
    });

    test("a resumable upload takes chunks in any order and in parallel, and commits once", async () => {
      const bytes = randomBytes(3 * 5 * MiB + 77);
      const sha = sha256(bytes);
      const chunkSize = 5 * MiB;
      const start = await client.startUpload({ sha256: sha, size: BigInt(bytes.length), chunkSize: BigInt(chunkSize) });
      const session = start.session!;
      assert.equal(session.chunkCount, 4);
      assert.deepEqual(session.received, []);
      const chunk = (i: number) => bytes.subarray(i * chunkSize, Math.min((i + 1) * chunkSize, bytes.length));
      // The last chunk first, then two in parallel.
      assert.equal((await client.uploadChunk(chunkRequests(session.sessionId, 3, chunk(3)))).stored, true);
      await Promise.all([1, 0].map((i) => client.uploadChunk(chunkRequests(session.sessionId, i, chunk(i)))));
      // A repeat is acknowledged and not stored again.
      const again = await client.uploadChunk(chunkRequests(session.sessionId, 1, chunk(1)));
      assert.equal(again.stored, false);
      assert.equal(again.receivedCount, 3);
      // StartUpload for the same blob returns the open session (a rerun continues it).
      const resumed = await client.startUpload({ sha256: sha, size: BigInt(bytes.length), chunkSize: 0n });
      assert.equal(resumed.session?.sessionId, session.sessionId);
      assert.equal(resumed.session?.chunkSize, BigInt(chunkSize));
      assert.deepEqual(resumed.session?.received, [0, 1, 3]);
      await rejectsWith(
        client.completeUpload({ sessionId: session.sessionId }),
        Code.FailedPrecondition,
        /missing 1 of 4 chunks \(2\)/,
      );
      await rejectsWith(client.statBlob({ sha256: sha }), Code.NotFound, /is not stored/);
      await client.uploadChunk(chunkRequests(session.sessionId, 2, chunk(2)));
      const done = await client.completeUpload({ sessionId: session.sessionId });
      assert.equal(done.created, true);
      assert.equal(done.blob?.size, BigInt(bytes.length));
      assert.equal(sha256(await read(client, sha)), sha);
      // Completing again answers the same; starting again finds the blob stored.
      assert.equal((await client.completeUpload({ sessionId: session.sessionId })).created, false);
      assert.equal((await client.startUpload({ sha256: sha, size: BigInt(bytes.length) })).alreadyStored, true);
      // A client that shared the session and sends a chunk late is told it is not needed.
      const late = await client.uploadChunk(chunkRequests(session.sessionId, 0, chunk(0)));
      assert.deepEqual([late.stored, late.receivedCount], [false, 4]);
      await eventually(async () =>
        (await eventSubjects(natsUrl, ns)).some((s) => s.endsWith("storage.blob.stored")) ? true : undefined,
      );
    });

    test("concurrent uploads of the same blob share one session and store one object", async () => {
      const bytes = randomBytes(10 * MiB + 1);
      const sha = sha256(bytes);
      const chunkSize = 5 * MiB;
      const upload = async () => {
        const start = await client.startUpload({
          sha256: sha,
          size: BigInt(bytes.length),
          chunkSize: BigInt(chunkSize),
        });
        if (!start.session) return { id: "", created: false };
        const s = start.session;
        await Promise.all(
          [0, 1, 2].map((i) =>
            client.uploadChunk(chunkRequests(s.sessionId, i, bytes.subarray(i * chunkSize, (i + 1) * chunkSize))),
          ),
        );
        const done = await client.completeUpload({ sessionId: s.sessionId });
        return { id: s.sessionId, created: done.created };
      };
      const results = await Promise.all([upload(), upload(), upload()]);
      const ids = new Set(results.map((r) => r.id).filter((id) => id !== ""));
      assert.equal(ids.size, 1, `one session expected, got ${[...ids].join(", ")}`);
      assert.equal(results.filter((r) => r.created).length, 1);
      assert.equal(sha256(await read(client, sha)), sha);
    });

    test("a corrupted chunk is refused with DATA_LOSS and not counted", async () => {
      const bytes = randomBytes(5 * MiB + 10);
      const sha = sha256(bytes);
      const { session } = await client.startUpload({
        sha256: sha,
        size: BigInt(bytes.length),
        chunkSize: BigInt(5 * MiB),
      });
      const good = bytes.subarray(0, 5 * MiB);
      const corrupted = Buffer.from(good);
      corrupted[12345] = corrupted[12345]! ^ 0xff;
      await rejectsWith(
        client.uploadChunk(chunkRequests(session!.sessionId, 0, corrupted, sha256(good))),
        Code.DataLoss,
        /^chunk 0 hashes to [0-9a-f]{64}, not the declared [0-9a-f]{64}: it was corrupted in transit; resend it$/,
      );
      assert.deepEqual((await client.getUploadStatus({ sessionId: session!.sessionId })).session?.received, []);
      assert.equal((await client.uploadChunk(chunkRequests(session!.sessionId, 0, good))).stored, true);
      assert.equal((await client.abortUpload({ sessionId: session!.sessionId })).aborted, true);
    });

    test("bad input is answered with a status and a message that says what to fix", async () => {
      const bytes = randomBytes(5 * MiB + 3);
      const sha = sha256(bytes);
      await rejectsWith(
        client.startUpload({ sha256: "ABC", size: 10n }),
        Code.InvalidArgument,
        /"ABC" is not a sha256: expected 64 lower-case hex characters/,
      );
      await rejectsWith(client.startUpload({ sha256: sha, size: 0n }), Code.InvalidArgument, /at least 1 byte/);
      await rejectsWith(client.startUpload({ sha256: sha, size: 2n ** 64n - 1n }), Code.InvalidArgument, /too large/);
      await rejectsWith(
        client.startUpload({ sha256: sha, size: BigInt(bytes.length), chunkSize: 1024n }),
        Code.InvalidArgument,
        /chunk_size 1024 must be between 5242880 \(5 MiB\) and 536870912 \(512 MiB\)/,
      );
      await rejectsWith(
        client.startUpload({ sha256: sha, size: 10n ** 12n * 60n, chunkSize: BigInt(5 * MiB) }),
        Code.InvalidArgument,
        /at most 10000: use a chunk_size of at least/,
      );
      const unknown = randomUUID();
      await rejectsWith(
        client.getUploadStatus({ sessionId: unknown }),
        Code.NotFound,
        new RegExp(`upload session ${unknown} does not exist .*call StartUpload again`),
      );
      await rejectsWith(
        client.uploadChunk(chunkRequests(unknown, 0, bytes.subarray(0, 10))),
        Code.NotFound,
        /does not exist/,
      );
      await rejectsWith(
        client.completeUpload({ sessionId: "../../etc" }),
        Code.InvalidArgument,
        /is not an upload session id/,
      );
      const { session } = await client.startUpload({
        sha256: sha,
        size: BigInt(bytes.length),
        chunkSize: BigInt(5 * MiB),
      });
      const id = session!.sessionId;
      await rejectsWith(
        client.uploadChunk(chunkRequests(id, 2, bytes.subarray(0, 10))),
        Code.OutOfRange,
        /chunk index 2 is out of range: session .* has chunks 0\.\.1/,
      );
      await rejectsWith(
        client.uploadChunk(chunkRequests(id, 1, bytes.subarray(0, 4))),
        Code.InvalidArgument,
        /chunk 1 is larger than its 3 bytes/,
      );
      await rejectsWith(
        client.uploadChunk(chunkRequests(id, 1, bytes.subarray(0, 2))),
        Code.InvalidArgument,
        /chunk 1 has 2 bytes but must have 3/,
      );
      await rejectsWith(
        client.uploadChunk(chunkRequests(id, 0, bytes.subarray(0, 10), "xyz")),
        Code.InvalidArgument,
        /chunk sha256 "xyz" must be 64 lower-case hex/,
      );
      await rejectsWith(
        client.uploadChunk(
          (async function* () {
            yield { part: { case: "data" as const, value: bytes.subarray(0, 10) } };
          })(),
        ),
        Code.InvalidArgument,
        /first UploadChunk message must carry the header/,
      );
      assert.equal((await client.abortUpload({ sessionId: id })).aborted, true);
      assert.equal((await client.abortUpload({ sessionId: id })).aborted, false);
      await rejectsWith(client.getUploadStatus({ sessionId: id }), Code.NotFound, /does not exist/);
      if (backend.name === "fs") assert.deepEqual(await readdir(join(dir.path, "blobs", "uploads")), []);
    });

    test("chunks whose own hashes match but whose whole does not are refused at completion; nothing is visible", async () => {
      const bytes = randomBytes(5 * MiB + 100);
      const declared = sha256(Buffer.from("something else"));
      const { session } = await client.startUpload({
        sha256: declared,
        size: BigInt(bytes.length),
        chunkSize: BigInt(5 * MiB),
      });
      const id = session!.sessionId;
      await client.uploadChunk(chunkRequests(id, 0, bytes.subarray(0, 5 * MiB)));
      await client.uploadChunk(chunkRequests(id, 1, bytes.subarray(5 * MiB)));
      await rejectsWith(
        client.completeUpload({ sessionId: id }),
        Code.InvalidArgument,
        /the assembled upload has sha256 [0-9a-f]{64} and 5242980 bytes, not the declared .*; nothing was stored and the session is discarded/,
      );
      await rejectsWith(client.statBlob({ sha256: declared }), Code.NotFound, /is not stored/);
      await rejectsWith(client.getUploadStatus({ sessionId: id }), Code.NotFound, /does not exist/);
    });

    test("completion verifies by reading back when this process did not hash every chunk in order", async () => {
      // A second replica on the same backend and namespace takes the chunks; this one completes.
      const other = await startStorage(parseEnv("storage", storageEnv, env));
      const viaOther = createClient(StorageService, `127.0.0.1:${other.grpcPort}`, {
        metadata: adminAuth(ns),
        maxMessageBytes: 16 * MiB,
        timeoutMs: 60_000,
      });
      try {
        const bytes = randomBytes(2 * 5 * MiB + 3);
        const sha = sha256(bytes);
        const chunk = (i: number) => bytes.subarray(i * 5 * MiB, Math.min((i + 1) * 5 * MiB, bytes.length));
        const { session } = await client.startUpload({
          sha256: sha,
          size: BigInt(bytes.length),
          chunkSize: BigInt(5 * MiB),
        });
        const id = session!.sessionId;
        await viaOther.uploadChunk(chunkRequests(id, 0, chunk(0)));
        await client.uploadChunk(chunkRequests(id, 1, chunk(1)));
        await viaOther.uploadChunk(chunkRequests(id, 2, chunk(2)));
        assert.equal((await client.completeUpload({ sessionId: id })).created, true);
        assert.equal(sha256(await read(client, sha)), sha);

        // The same through the read-back path when the whole does not match: refused, nothing visible.
        const wrong = sha256(Buffer.from("not these bytes"));
        const started = await client.startUpload({
          sha256: wrong,
          size: BigInt(bytes.length),
          chunkSize: BigInt(5 * MiB),
        });
        const wrongId = started.session!.sessionId;
        for (const i of [0, 1, 2]) await (i === 1 ? client : viaOther).uploadChunk(chunkRequests(wrongId, i, chunk(i)));
        await rejectsWith(
          client.completeUpload({ sessionId: wrongId }),
          Code.InvalidArgument,
          /the assembled upload has sha256 [0-9a-f]{64} and 10485763 bytes, not the declared/,
        );
        await rejectsWith(client.statBlob({ sha256: wrong }), Code.NotFound, /is not stored/);
      } finally {
        viaOther.$close();
        await other.stop();
      }
    });

    test("a chunk stored again with other bytes after being hashed is verified as finally stored", async () => {
      const bytes = randomBytes(2 * 5 * MiB + 9);
      const sha = sha256(bytes);
      const chunk = (i: number) => bytes.subarray(i * 5 * MiB, Math.min((i + 1) * 5 * MiB, bytes.length));
      const { session } = await client.startUpload({
        sha256: sha,
        size: BigInt(bytes.length),
        chunkSize: BigInt(5 * MiB),
      });
      const id = session!.sessionId;
      // Chunk 0 first with other (self-consistent) bytes, as a client whose file changed would.
      const stale = randomBytes(5 * MiB);
      assert.equal((await client.uploadChunk(chunkRequests(id, 0, stale))).stored, true);
      await client.uploadChunk(chunkRequests(id, 1, chunk(1)));
      // Then the right bytes: stored over the stale ones (a different digest is not a duplicate).
      assert.equal((await client.uploadChunk(chunkRequests(id, 0, chunk(0)))).stored, true);
      await client.uploadChunk(chunkRequests(id, 2, chunk(2)));
      assert.equal((await client.completeUpload({ sessionId: id })).created, true);
      assert.equal(sha256(await read(client, sha)), sha);
    });

    test("64 concurrent small PutBlobs, each sent twice at once, are all stored once, durable and readable", async () => {
      const storedEvents = async () => {
        const nc = await connect({ servers: natsUrl });
        try {
          const jsm = await jetstreamManager(nc);
          const info = await jsm.streams.info(`${ns.toUpperCase()}_EVENTS`, { subjects_filter: ">" });
          const subjects = info.state.subjects ?? {};
          return Object.entries(subjects)
            .filter(([k]) => k.endsWith("storage.blob.stored"))
            .reduce((n, [, v]) => n + v, 0);
        } finally {
          await nc.close();
        }
      };
      const before = await storedEvents();
      const blobs = Array.from({ length: 64 }, (_, i) => randomBytes(4096 + i));
      const putOne = async (bytes: Buffer) =>
        client.putBlob(
          (async function* () {
            yield { part: { case: "header" as const, value: { sha256: sha256(bytes), size: BigInt(bytes.length) } } };
            if (bytes.length > 0) yield { part: { case: "chunk" as const, value: bytes } };
          })(),
        );
      const answers = await Promise.all(blobs.flatMap((b) => [putOne(b), putOne(b)]));
      for (let i = 0; i < blobs.length; i++) {
        const pair = [answers[2 * i]!, answers[2 * i + 1]!];
        assert.equal(pair.filter((a) => a.created).length, 1, `blob ${i} created exactly once`);
        assert.equal(sha256(await read(client, sha256(blobs[i]!))), sha256(blobs[i]!));
      }
      // A repeat later is idempotent.
      assert.equal((await putOne(blobs[5]!)).created, false);
      if (backend.name === "fs") {
        // On disk (a fresh store rebuilds its index from the packs), nothing left in tmp/.
        const fresh = new FsBlobStore(join(dir.path, "blobs"));
        for (const b of blobs.slice(0, 8)) assert.equal((await fresh.stat(sha256(b)))?.size, b.length);
        await fresh.close();
        assert.deepEqual(await readdir(join(dir.path, "blobs", "tmp")), []);
      }
      // Each new blob announced once (the event id dedupes the pair).
      await eventually(async () => ((await storedEvents()) - before === 64 ? true : undefined), 10_000, "64 events");
      // Refused small uploads store nothing.
      const bytes = randomBytes(4096);
      await rejectsWith(
        client.putBlob(
          (async function* () {
            yield { part: { case: "header" as const, value: { sha256: sha256(Buffer.from("x")), size: 4096n } } };
            yield { part: { case: "chunk" as const, value: bytes } };
          })(),
        ),
        Code.InvalidArgument,
        /sha256 mismatch: declared [0-9a-f]{64}, received [0-9a-f]{64}; nothing was stored/,
      );
      await rejectsWith(client.statBlob({ sha256: sha256(bytes) }), Code.NotFound, /is not stored/);
    });

    test("PresignGet hands out a working URL on S3 and says why not on a folder", async () => {
      const bytes = randomBytes(1000);
      const sha = await put(client, bytes);
      if (backend.name === "fs") {
        await rejectsWith(client.presignGet({ sha256: sha }), Code.FailedPrecondition, /folder backend/);
        return;
      }
      const { url } = await client.presignGet({ sha256: sha, expirySeconds: 60 });
      const response = await fetch(url);
      assert.equal(response.status, 200);
      assert.deepEqual(Buffer.from(await response.arrayBuffer()), bytes);
      await rejectsWith(
        client.presignGet({ sha256: sha, expirySeconds: 8 * 86400 }),
        Code.InvalidArgument,
        /seven days/,
      );
      await rejectsWith(client.presignGet({ sha256: "b".repeat(64) }), Code.NotFound, /not stored/);
    });

    test("registry: revisions, refs with compare-and-set, paging, deletion and events", async () => {
      const config = Buffer.from('{"model_type":"bert"}');
      const weights = randomBytes(4096);
      const configSha = await put(client, config);
      const weightsSha = await put(client, weights);
      const repo = { kind: RepoKind.MODEL, id: "acme/tiny-bert.v1" };
      const entries = [
        { path: "config.json", sha256: configSha, size: BigInt(config.length), gitBlobSha1: "1".repeat(40) },
        { path: "weights/model.safetensors", sha256: weightsSha, size: 4096n, lfs: true },
      ];
      await rejectsWith(
        registry.putRevision({
          repo,
          revision: { message: "x", entries: [{ path: "a.bin", sha256: "c".repeat(64), size: 3n }] },
          branch: "main",
        }),
        Code.FailedPrecondition,
        /1 blob\(s\) are not stored; upload them first .*: a\.bin/,
      );
      const first = await registry.putRevision({
        repo,
        revision: { message: "initial", author: "alice", entries },
        branch: "main",
        expectedCommit: "",
      });
      assert.equal(first.created, true);
      const c1 = first.revision!.commit;
      assert.match(c1, /^[0-9a-f]{40}$/);
      assert.equal(first.ref?.commit, c1);
      // The same content again is not an error.
      const again = await registry.putRevision({ repo, revision: { message: "initial", author: "alice", entries } });
      assert.equal(again.created, false);
      assert.equal(again.revision?.commit, c1);
      const got = await registry.getRevision({ repo, revision: "main" });
      assert.equal(got.revision?.commit, c1);
      assert.deepEqual(
        got.revision?.entries.map((e) => [e.path, e.sha256, e.size, e.gitBlobSha1, e.lfs]),
        [
          ["config.json", configSha, BigInt(config.length), "1".repeat(40), false],
          ["weights/model.safetensors", weightsSha, 4096n, "", true],
        ],
      );
      assert.equal((await registry.getRevision({ repo })).revision?.commit, c1);
      assert.equal((await registry.getRevision({ repo, revision: c1 })).revision?.message, "initial");

      const c2 = "2".repeat(40);
      await rejectsWith(
        registry.putRevision({
          repo,
          revision: { commit: c2, parent: c1, message: "second", entries: entries.slice(0, 1) },
          branch: "main",
          expectedCommit: "f".repeat(40),
        }),
        Code.Aborted,
        new RegExp(
          `branch main of model acme/tiny-bert.v1 points at ${c1}, not f{40} as expected; re-read it and retry`,
        ),
      );
      const second = await registry.putRevision({
        repo,
        revision: { commit: c2, parent: c1, message: "second", entries: entries.slice(0, 1) },
        branch: "main",
        expectedCommit: c1,
      });
      assert.equal(second.ref?.commit, c2);
      await rejectsWith(
        registry.putRevision({ repo, revision: { commit: c2, parent: c1, message: "different", entries } }),
        Code.AlreadyExists,
        /already has commit 2{40} with different content/,
      );

      const tag = await registry.updateRef({
        repo,
        kind: RefKind.TAG,
        name: "v1.0",
        newCommit: c1,
        expectedCommit: "",
      });
      assert.equal(tag.oldCommit, "");
      await rejectsWith(
        registry.updateRef({ repo, kind: RefKind.TAG, name: "v1.0", newCommit: c2, expectedCommit: "" }),
        Code.Aborted,
        /tag v1.0 of model acme\/tiny-bert.v1 points at .*, not nothing as expected/,
      );
      assert.equal((await registry.getRevision({ repo, revision: "v1.0" })).revision?.commit, c1);
      await rejectsWith(
        registry.updateRef({ repo, kind: RefKind.BRANCH, name: "dev", newCommit: "9".repeat(40) }),
        Code.FailedPrecondition,
        /has no revision 9{40}; publish it with PutRevision first/,
      );
      await rejectsWith(
        registry.updateRef({ repo, kind: RefKind.BRANCH, name: "../heads", newCommit: c1 }),
        Code.InvalidArgument,
        /ref name "..\/heads" must be/,
      );
      await registry.updateRef({ repo, kind: RefKind.BRANCH, name: "refs/pr/1", newCommit: c1 });
      const removed = await registry.updateRef({
        repo,
        kind: RefKind.BRANCH,
        name: "refs/pr/1",
        newCommit: "",
        expectedCommit: c1,
      });
      assert.equal(removed.oldCommit, c1);
      assert.equal(removed.ref, undefined);

      const history = await registry.listRevisions({ repo, pageSize: 1 });
      assert.deepEqual(
        history.revisions.map((r) => r.commit),
        [c2],
      );
      assert.equal(history.nextPageToken, c1);
      const rest = await registry.listRevisions({ repo, pageSize: 1, pageToken: history.nextPageToken });
      assert.deepEqual(
        rest.revisions.map((r) => [r.commit, r.entryCount, r.totalSize]),
        [[c1, 2n, BigInt(config.length + 4096)]],
      );
      assert.equal(rest.nextPageToken, "");

      const info = await registry.getRepo({ repo });
      assert.equal(info.repo?.revisionCount, 2n);
      assert.deepEqual(
        info.repo?.refs.map((r) => [r.kind, r.name, r.commit]),
        [
          [RefKind.BRANCH, "main", c2],
          [RefKind.TAG, "v1.0", c1],
        ],
      );

      // Paging over repos, with a prefix.
      for (const id of ["acme/b", "acme/a", "other"]) {
        await registry.putRevision({
          repo: { kind: RepoKind.DATASET, id },
          revision: { message: id, entries: entries.slice(0, 1) },
          branch: "main",
        });
      }
      const p1 = await registry.listRepos({ kind: RepoKind.DATASET, prefix: "acme/", pageSize: 1 });
      assert.deepEqual(
        p1.repos.map((r) => r.repo?.id),
        ["acme/a"],
      );
      const p2 = await registry.listRepos({
        kind: RepoKind.DATASET,
        prefix: "acme/",
        pageSize: 1,
        pageToken: p1.nextPageToken,
      });
      assert.deepEqual(
        p2.repos.map((r) => r.repo?.id),
        ["acme/b"],
      );
      assert.equal(p2.nextPageToken, "");
      assert.deepEqual(
        (await registry.listRepos({})).repos.map((r) => `${String(r.repo?.kind)}:${String(r.repo?.id)}`),
        [
          `${RepoKind.DATASET}:acme/a`,
          `${RepoKind.DATASET}:acme/b`,
          `${RepoKind.DATASET}:other`,
          `${RepoKind.MODEL}:acme/tiny-bert.v1`,
        ],
      );

      // Hostile input.
      await rejectsWith(
        registry.putRevision({
          repo,
          revision: { entries: [{ path: "../../etc/passwd", sha256: configSha, size: 1n }] },
        }),
        Code.InvalidArgument,
        /manifest path "..\/..\/etc\/passwd" must be a relative path/,
      );
      await rejectsWith(
        registry.putRevision({ repo, revision: { entries: [{ path: "/abs", sha256: configSha, size: 1n }] } }),
        Code.InvalidArgument,
        /must be a relative path/,
      );
      await rejectsWith(
        registry.getRepo({ repo: { kind: RepoKind.MODEL, id: "a/b/c" } }),
        Code.InvalidArgument,
        /repo id "a\/b\/c" must be owner\/name or name/,
      );
      await rejectsWith(
        registry.getRepo({ repo: { kind: RepoKind.UNSPECIFIED, id: "a" } }),
        Code.InvalidArgument,
        /repo.kind must be/,
      );
      await rejectsWith(
        registry.getRevision({ repo, revision: "nope" }),
        Code.NotFound,
        /has no revision, branch or tag "nope"/,
      );
      await rejectsWith(
        registry.listRepos({ pageSize: 5000 }),
        Code.InvalidArgument,
        /page_size 5000 is over the maximum 1000/,
      );
      await rejectsWith(
        registry.listRepos({ pageToken: "garbage" }),
        Code.InvalidArgument,
        /page_token is not one this service issued/,
      );
      await rejectsWith(
        registry.putRevision({ repo, revision: { commit: "XYZ", entries: [] } }),
        Code.InvalidArgument,
        /revision.commit "XYZ" must be a commit id: 40 lower-case hex characters/,
      );

      const deleted = await registry.deleteRepo({ repo });
      assert.deepEqual([deleted.deleted, deleted.revisionsDeleted], [true, 2n]);
      assert.equal((await registry.deleteRepo({ repo })).deleted, false);
      await rejectsWith(registry.getRepo({ repo }), Code.NotFound, /model acme\/tiny-bert.v1 does not exist/);

      const subjects = await eventSubjects(natsUrl, ns);
      for (const what of ["registry.revision.published", "registry.ref.updated", "registry.repo.deleted"])
        assert.ok(
          subjects.some((s) => s.endsWith(what)),
          `${what} in ${subjects.join(", ")}`,
        );
    });

    test("garbage collection removes unreferenced blobs after the grace period; scrub reports corruption", async () => {
      const kept = randomBytes(2048);
      const orphan = randomBytes(2048);
      const keptSha = await put(client, kept);
      const orphanSha = await put(client, orphan);
      const repo = { kind: RepoKind.MODEL, id: "gc/keep" };
      await registry.putRevision({
        repo,
        revision: { message: "keep", entries: [{ path: "w.bin", sha256: keptSha, size: 2048n }] },
        branch: "main",
      });
      // Corrupt the referenced blob behind storage's back.
      const key = `sha256/${keptSha.slice(0, 2)}/${keptSha.slice(2, 4)}/${keptSha}`;
      const evil = Buffer.from(kept);
      evil[0] = evil[0]! ^ 1;
      if (backend.name === "fs") {
        // Small blobs are records in pack files: flip the same bit where the blob's bytes are.
        const packs = join(dir.path, "blobs", "packs");
        for (const name of (await readdir(packs)).filter((n) => n.endsWith(".pack"))) {
          const at = (await readFile(join(packs, name))).indexOf(kept);
          if (at < 0) continue;
          const file = await open(join(packs, name), "r+");
          await file.write(evil.subarray(0, 1), 0, 1, at);
          await file.close();
        }
      } else {
        await s3h!.admin.putObject(env["NEARHUB_S3_BUCKET"]!, key, evil, evil.length);
      }
      await sleep(1200);
      const gc = await startStorage(
        parseEnv("storage", storageEnv, {
          ...env,
          NEARHUB_GC_GRACE_MS: "1000",
          NEARHUB_GC_INTERVAL_MS: "300",
          NEARHUB_SCRUB_INTERVAL_MS: "300",
          NEARHUB_SCRUB_SAMPLE: "100000",
        }),
      );
      try {
        await eventually(
          async () =>
            client.statBlob({ sha256: orphanSha }).then(
              () => undefined,
              (e: unknown) => (e instanceof NearhubError && e.code === Code.NotFound ? true : undefined),
            ),
          20_000,
          "the unreferenced blob to be collected",
        );
        assert.equal((await client.statBlob({ sha256: keptSha })).blob?.size, 2048n);
        // The manifest is a blob too, and referenced: the revision still reads.
        assert.equal((await registry.getRevision({ repo })).revision?.entries[0]?.sha256, keptSha);
        await eventually(
          async () =>
            (await eventSubjects(natsUrl, ns)).some((s) => s.endsWith("storage.blob.corrupt")) ? true : undefined,
          20_000,
          "a blob.corrupt event",
        );
        await eventually(
          async () => {
            const metrics = await (await fetch(`http://127.0.0.1:${gc.metricsPort}/metrics`)).text();
            return /nearhub_storage_scrub_blobs_total\{[^}]*result="corrupt"[^}]*\} [1-9]/.test(metrics) &&
              /nearhub_storage_gc_removed_blobs_total\{[^}]*\} [1-9]/.test(metrics)
              ? true
              : undefined;
          },
          10_000,
          "the gc and scrub metrics",
        );
      } finally {
        await gc.stop();
      }
    });

    test("abandoned sessions expire and their parts are removed", async () => {
      // A second replica on the same bucket/folder and namespace, with a short expiry.
      const short = await startStorage(
        parseEnv("storage", storageEnv, {
          ...env,
          NEARHUB_UPLOAD_SESSION_TTL_MS: "1500",
          NEARHUB_UPLOAD_SWEEP_INTERVAL_MS: "200",
          LOG_LEVEL: process.env["DEBUG_SWEEP"] ? "debug" : "silent",
        }),
      );
      try {
        const bytes = randomBytes(5 * MiB + 1);
        const { session } = await client.startUpload({
          sha256: sha256(bytes),
          size: BigInt(bytes.length),
          chunkSize: BigInt(5 * MiB),
        });
        await client.uploadChunk(chunkRequests(session!.sessionId, 0, bytes.subarray(0, 5 * MiB)));
        await eventually(
          async () =>
            client.getUploadStatus({ sessionId: session!.sessionId }).then(
              () => undefined,
              (e: unknown) => (e instanceof NearhubError && e.code === Code.NotFound ? true : undefined),
            ),
          15_000,
          "the session to expire",
        );
        if (backend.name === "fs")
          await eventually(async () =>
            (await readdir(join(dir.path, "blobs", "uploads"))).length === 0 ? true : undefined,
          );
      } finally {
        await short.stop();
      }
    });
  });
}
