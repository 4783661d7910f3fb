import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { Code, NearhubError, createClient, parseEnv, type ServiceHost } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import {
  adminAuth,
  deleteNamespace,
  dockerAvailable,
  nats,
  s3,
  serviceEnv,
  tempDir,
  uniqueNamespace,
  type S3Handle,
} from "@nearhub/testing";
import type { Client } from "minio";
import { storageEnv } from "./config.js";
import { S3BlobStore, type S3BlobStoreOptions } from "./s3-blob-store.js";
import { startStorage } from "./service.js";
import { uploadFile } from "./transfer-client.js";

const MiB = 1024 * 1024;

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function* chunksOf(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.byteLength; i += size) yield bytes.subarray(i, Math.min(i + size, bytes.byteLength));
}

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const chunk of chunks) parts.push(chunk);
  return Buffer.concat(parts);
}

/** Rejects with a NearhubError of `code` whose message matches `message`. */
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

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("S3BlobStore against a real S3 protocol server", () => {
  let server: S3Handle;
  let admin: Client;
  /** s3rver (the fallback) has no ListMultipartUploads to check that refused uploads left no parts. */
  let multipart: boolean;

  before(async () => {
    multipart = Boolean(process.env["S3_ENDPOINT"]) || (await dockerAvailable());
    server = await s3();
    admin = server.admin;
  });

  after(async () => {
    await server?.stop();
  });

  function storeOn(bucket: string, overrides: Partial<S3BlobStoreOptions> = {}): S3BlobStore {
    return new S3BlobStore({
      endpoint: server.endpoint,
      bucket,
      region: server.region,
      accessKey: server.accessKey,
      secretKey: server.secretKey,
      pathStyle: true,
      ...overrides,
    });
  }

  async function keys(bucket: string, prefix: string): Promise<string[]> {
    const names: string[] = [];
    for await (const item of admin.listObjectsV2(bucket, prefix, true)) {
      const { name } = item as { name?: string };
      if (name) names.push(name);
    }
    return names;
  }

  test("put, stat and get round-trip a small blob under sha256/ab/cd/<sha256>", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    await store.check();
    const bytes = Buffer.from("hello, nearhub\n");
    const sha = sha256(bytes);
    assert.equal(await store.stat(sha), undefined);
    assert.deepEqual(await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 4)), { created: true });
    assert.deepEqual(await store.stat(sha), { sha256: sha, size: bytes.length });
    assert.deepEqual(await collect(store.get(sha, 0, undefined)), bytes);
    assert.deepEqual(await keys(bucket, ""), [`sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`]);
  });

  test("a multi-megabyte blob fed in uneven chunks arrives intact", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(12 * MiB + 12345);
    const sha = sha256(bytes);
    assert.deepEqual(await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, MiB + 7)), { created: true });
    assert.deepEqual(await store.stat(sha), { sha256: sha, size: bytes.length });
    const back = await collect(store.get(sha, 0, undefined));
    assert.equal(back.length, bytes.length);
    assert.equal(sha256(back), sha);
    assert.deepEqual(await keys(bucket, "tmp/"), []);
  });

  test("a blob larger than one part goes up in parts to its key; a refused one leaves no object and no parts", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(65 * MiB + 1);
    const sha = sha256(bytes);
    assert.deepEqual(await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, MiB)), { created: true });
    assert.deepEqual(await store.stat(sha), { sha256: sha, size: bytes.length });
    assert.equal(sha256(await collect(store.get(sha, 0, undefined))), sha);

    const other = "0".repeat(64);
    await rejectsWith(
      store.put({ sha256: other, size: bytes.length }, chunksOf(bytes, MiB)),
      Code.InvalidArgument,
      /^sha256 mismatch: /,
    );
    async function* cut(): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, MiB);
      throw new NearhubError(Code.Cancelled, "client went away");
    }
    await rejectsWith(store.put({ sha256: other, size: bytes.length }, cut()), Code.Cancelled, /^client went away$/);
    assert.equal(await store.stat(other), undefined);
    assert.deepEqual(await keys(bucket, ""), [`sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`]);
    // s3rver has no ListMultipartUploads (nor a working abort) to look at the parts with.
    if (multipart) {
      const incomplete: unknown[] = [];
      for await (const upload of admin.listIncompleteUploads(bucket, "", true)) incomplete.push(upload);
      assert.deepEqual(incomplete, []);
    }
  });

  test("a zero-length blob is stored and read back empty", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const sha = sha256(new Uint8Array(0));
    assert.deepEqual(await store.put({ sha256: sha, size: 0 }, chunksOf(new Uint8Array(0), 1)), { created: true });
    assert.deepEqual(await store.stat(sha), { sha256: sha, size: 0 });
    assert.equal((await collect(store.get(sha, 0, undefined))).length, 0);
    assert.equal((await collect(store.get(sha, 0, 0))).length, 0);
    assert.deepEqual(await store.put({ sha256: sha, size: 0 }, chunksOf(new Uint8Array(0), 1)), { created: false });
  });

  test("a zero-length declaration refuses any byte", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const sha = sha256(new Uint8Array(0));
    await rejectsWith(
      store.put({ sha256: sha, size: 0 }, chunksOf(Buffer.from("x"), 1)),
      Code.InvalidArgument,
      /^upload is larger than the declared 0 bytes; nothing was stored$/,
    );
    assert.equal(await store.stat(sha), undefined);
    assert.deepEqual(await keys(bucket, ""), []);
  });

  test("get reads a range from an offset, and from an offset to the end", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(100_000);
    const sha = sha256(bytes);
    await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 30_000));
    assert.deepEqual(await collect(store.get(sha, 1000, 500)), bytes.subarray(1000, 1500));
    assert.deepEqual(await collect(store.get(sha, 99_990, undefined)), bytes.subarray(99_990));
    assert.deepEqual(await collect(store.get(sha, 0, 1)), bytes.subarray(0, 1));
  });

  test("get of an absent blob fails with NOT_FOUND", async () => {
    const store = storeOn(await server.createBucket());
    await rejectsWith(collect(store.get("0".repeat(64), 0, undefined)), Code.NotFound, /blob 0{64} is not stored/);
  });

  test("putting a stored blob again answers created: false and leaves one object", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(5000);
    const sha = sha256(bytes);
    assert.equal((await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 1000))).created, true);
    assert.equal((await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 1000))).created, false);
    assert.equal((await keys(bucket, "sha256/")).length, 1);
    assert.deepEqual(await keys(bucket, "tmp/"), []);
  });

  test("a sha256 mismatch stores nothing and leaves no temporary object", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(3000);
    const declared = sha256(Buffer.from("something else"));
    await rejectsWith(
      store.put({ sha256: declared, size: bytes.length }, chunksOf(bytes, 1000)),
      Code.InvalidArgument,
      new RegExp(`^sha256 mismatch: declared ${declared}, received ${sha256(bytes)}; nothing was stored$`),
    );
    assert.equal(await store.stat(declared), undefined);
    assert.equal(await store.stat(sha256(bytes)), undefined);
    assert.deepEqual(await keys(bucket, "tmp/"), []);
    assert.deepEqual(await keys(bucket, ""), []);
  });

  test("more bytes than declared store nothing", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(11);
    const sha = sha256(bytes.subarray(0, 10));
    await rejectsWith(
      store.put({ sha256: sha, size: 10 }, chunksOf(bytes, 4)),
      Code.InvalidArgument,
      /^upload is larger than the declared 10 bytes; nothing was stored$/,
    );
    assert.equal(await store.stat(sha), undefined);
    assert.deepEqual(await keys(bucket, ""), []);
  });

  test("fewer bytes than declared store nothing", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(5);
    const sha = sha256(bytes);
    await rejectsWith(
      store.put({ sha256: sha, size: 10 }, chunksOf(bytes, 2)),
      Code.InvalidArgument,
      /^upload has 5 bytes but declared 10; nothing was stored$/,
    );
    assert.equal(await store.stat(sha), undefined);
    assert.deepEqual(await keys(bucket, ""), []);
  });

  test("a failing chunk source or an aborted call stores nothing and keeps its error", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(4000);
    const sha = sha256(bytes);
    async function* broken(): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, 1000);
      throw new NearhubError(Code.Cancelled, "client went away");
    }
    await rejectsWith(store.put({ sha256: sha, size: bytes.length }, broken()), Code.Cancelled, /^client went away$/);

    const controller = new AbortController();
    async function* abortedMidway(): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, 1000);
      controller.abort(new NearhubError(Code.Cancelled, "call cancelled"));
      yield bytes.subarray(1000);
    }
    await rejectsWith(
      store.put({ sha256: sha, size: bytes.length }, abortedMidway(), controller.signal),
      Code.Cancelled,
      /^call cancelled$/,
    );
    assert.equal(await store.stat(sha), undefined);
    assert.deepEqual(await keys(bucket, ""), []);
  });

  test("concurrent puts of one blob both succeed, create it once and leave one object", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(2 * MiB);
    const sha = sha256(bytes);
    const results = await Promise.all([
      store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 64 * 1024)),
      store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 100_000)),
      store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, MiB)),
    ]);
    assert.deepEqual(results.map((r) => r.created).sort(), [false, false, true]);
    assert.deepEqual(await keys(bucket, ""), [`sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`]);
    assert.equal(sha256(await collect(store.get(sha, 0, undefined))), sha);
  });

  test("concurrent puts through two stores (two replicas) both succeed and leave one object", async () => {
    const bucket = await server.createBucket();
    const bytes = randomBytes(MiB);
    const sha = sha256(bytes);
    const results = await Promise.all([
      storeOn(bucket).put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 64 * 1024)),
      storeOn(bucket).put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 64 * 1024)),
    ]);
    assert.ok(results.some((r) => r.created));
    assert.deepEqual(await keys(bucket, ""), [`sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`]);
  });

  test("check() on a missing bucket says which bucket, where, and how to fix it", async () => {
    const store = storeOn("nearhub-missing-bucket");
    await rejectsWith(
      store.check(),
      Code.FailedPrecondition,
      new RegExp(
        `^bucket nearhub-missing-bucket does not exist at ${server.endpoint.replace(/[.]/g, "\\.")}; create it \\(mc mb .*\\) or set NEARHUB_S3_BUCKET$`,
      ),
    );
  });

  test("check() leaves fresh temporary objects alone: they may be uploads in flight", async () => {
    const bucket = await server.createBucket();
    await admin.putObject(bucket, "tmp/in-flight", Buffer.from("partial"));
    await storeOn(bucket).check();
    assert.deepEqual(await keys(bucket, "tmp/"), ["tmp/in-flight"]);
  });

  test("an unreachable endpoint fails with UNAVAILABLE naming it", async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const store = storeOn("nearhub-anything", { endpoint });
    const named = new RegExp(
      `S3 endpoint ${endpoint.replace(/[.]/g, "\\.")} is unreachable .*ECONNREFUSED.*check NEARHUB_S3_ENDPOINT`,
    );
    await rejectsWith(store.check(), Code.Unavailable, named);
    await rejectsWith(store.stat("0".repeat(64)), Code.Unavailable, named);
    const bytes = Buffer.from("x");
    await rejectsWith(store.put({ sha256: sha256(bytes), size: 1 }, chunksOf(bytes, 1)), Code.Unavailable, named);
    await rejectsWith(collect(store.get("0".repeat(64), 0, undefined)), Code.Unavailable, named);
  });

  test("an https endpoint speaks TLS: against a plain-http server it fails UNAVAILABLE with a hint", async () => {
    const endpoint = server.endpoint.replace("http:", "https:");
    const store = storeOn(await server.createBucket(), { endpoint });
    await rejectsWith(
      store.check(),
      Code.Unavailable,
      /TLS with https:.* failed .*check whether the server speaks http rather than https/,
    );
  });

  test("wrong credentials fail with PERMISSION_DENIED naming the variables to check", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket, { accessKey: "NOBODY", secretKey: "not-the-secret" });
    await rejectsWith(
      store.check(),
      Code.PermissionDenied,
      /answered .*; check NEARHUB_S3_ACCESS_KEY, NEARHUB_S3_SECRET_KEY/,
    );
  });

  test("presignGet gives a URL that downloads the blob without credentials", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(2048);
    const sha = sha256(bytes);
    await store.put({ sha256: sha, size: bytes.length }, chunksOf(bytes, 1000));
    const url = await store.presignGet(sha, 60);
    assert.ok(url.startsWith(`${server.endpoint}/${bucket}/sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}?`), url);
    const response = await fetch(url);
    assert.equal(response.status, 200);
    assert.deepEqual(Buffer.from(await response.arrayBuffer()), bytes);
    await rejectsWith(store.presignGet(sha, 0), Code.InvalidArgument, /expiry 0 s is outside/);
    await rejectsWith(store.presignGet(sha, 8 * 24 * 3600), Code.InvalidArgument, /at most seven days/);
    await rejectsWith(store.presignGet("nope", 60), Code.InvalidArgument, /is not a sha256/);
  });

  test("virtual-host style puts the bucket in the host name", async () => {
    const endpoint = server.endpoint.replace("127.0.0.1", "localhost");
    const store = storeOn("nearhub-vhost", { endpoint, pathStyle: false });
    const url = new URL(await store.presignGet("0".repeat(64), 60));
    assert.equal(url.hostname, "nearhub-vhost.localhost");
    assert.equal(url.pathname, `/sha256/00/00/${"0".repeat(64)}`);
  });

  /** Uploads `bytes` as parts of `size` to the chunked upload `handle`; the parts, for completion. */
  async function writeParts(
    store: S3BlobStore,
    handle: Record<string, string>,
    bytes: Buffer,
    size: number,
  ): Promise<Array<{ index: number; etag: string; size: number }>> {
    const parts = [];
    for (let index = 0; index * size < bytes.length; index++) {
      const part = bytes.subarray(index * size, Math.min((index + 1) * size, bytes.length));
      const { etag } = await store.writeChunk(handle, index, index * size, part, sha256(part));
      parts.push({ index, etag, size: part.length });
    }
    return parts;
  }

  test("a direct chunked upload is invisible until completion, then appears at its key with no temporary object", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(2 * 5 * MiB + 17);
    const sha = sha256(bytes);
    const handle = await store.beginDirect("7c1a5b0e-0000-4000-8000-000000000001", { sha256: sha, size: bytes.length });
    assert.equal(handle["key"], `sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`);
    const parts = await writeParts(store, handle, bytes, 5 * MiB);
    assert.equal(await store.stat(sha), undefined, "nothing is visible before completion");
    assert.deepEqual(await keys(bucket, ""), []);
    await rejectsWith(
      store.completeChunked(handle, { sha256: sha, size: bytes.length }, parts),
      Code.Internal,
      /can only be completed with the digest of its parts/,
    );
    assert.equal(await store.stat(sha), undefined, "an unverified direct upload is never completed");
    assert.deepEqual(await store.completeChunked(handle, { sha256: sha, size: bytes.length }, parts, { sha256: sha }), {
      created: true,
    });
    assert.equal(sha256(await collect(store.get(sha, 0, undefined))), sha);
    assert.deepEqual(await keys(bucket, ""), [handle["key"]]);
    // A retry of a completion whose answer was lost finds the blob and leaves it as it is.
    assert.deepEqual(await store.completeChunked(handle, { sha256: sha, size: bytes.length }, parts, { sha256: sha }), {
      created: false,
    });
    // Cleaning up after the session never touches the blob at its key.
    await store.abortChunked(handle);
    assert.equal(sha256(await collect(store.get(sha, 0, undefined))), sha);
  });

  test("a direct chunked upload whose digest does not match leaves nothing at the declared key", async () => {
    const bucket = await server.createBucket();
    const store = storeOn(bucket);
    const bytes = randomBytes(5 * MiB + 5);
    const declared = sha256(Buffer.from("something else"));
    const handle = await store.beginDirect("7c1a5b0e-0000-4000-8000-000000000002", {
      sha256: declared,
      size: bytes.length,
    });
    const parts = await writeParts(store, handle, bytes, 5 * MiB);
    await rejectsWith(
      store.completeChunked(handle, { sha256: declared, size: bytes.length }, parts, { sha256: sha256(bytes) }),
      Code.InvalidArgument,
      new RegExp(
        `^the assembled upload has sha256 ${sha256(bytes)} and ${bytes.length} bytes, not the declared ${declared}`,
      ),
    );
    assert.equal(await store.stat(declared), undefined);
    assert.deepEqual(await keys(bucket, ""), []);
  });

  test("direct uploads of one blob completed at once, in one store and through two, leave one correct object", async () => {
    const bucket = await server.createBucket();
    const bytes = randomBytes(2 * 5 * MiB + 1);
    const sha = sha256(bytes);
    const expected = { sha256: sha, size: bytes.length };
    const one = storeOn(bucket);
    const stores = [one, one, storeOn(bucket)];
    const uploads = await Promise.all(
      stores.map(async (store, i) => {
        const handle = await store.beginDirect(`7c1a5b0e-0000-4000-8000-00000000001${i}`, expected);
        return { store, handle, parts: await writeParts(store, handle, bytes, 5 * MiB) };
      }),
    );
    const results = await Promise.all(
      uploads.map(({ store, handle, parts }) => store.completeChunked(handle, expected, parts, { sha256: sha })),
    );
    // The same store creates once; a second replica may complete its own upload of the same
    // verified bytes at the same moment (S3 keeps one object either way).
    assert.deepEqual(
      results
        .slice(0, 2)
        .map((r) => r.created)
        .sort(),
      [false, true],
    );
    assert.deepEqual(await keys(bucket, ""), [`sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`]);
    assert.equal(sha256(await collect(one.get(sha, 0, undefined))), sha);
  });

  describe("the storage service over gRPC with NEARHUB_BLOB_BACKEND=s3", () => {
    let natsUrl: string;
    const ns = uniqueNamespace();
    let dir: Awaited<ReturnType<typeof tempDir>>;
    let host: ServiceHost;
    let bucket: string;
    let env: Record<string, string>;

    before(async () => {
      natsUrl = (await nats()).url;
      dir = await tempDir();
      bucket = await server.createBucket();
      env = serviceEnv(natsUrl, ns, dir.path, {
        NEARHUB_BLOB_BACKEND: "s3",
        NEARHUB_S3_ENDPOINT: server.endpoint,
        NEARHUB_S3_BUCKET: bucket,
        NEARHUB_S3_REGION: server.region,
        NEARHUB_S3_ACCESS_KEY: server.accessKey,
        NEARHUB_S3_SECRET_KEY: server.secretKey,
        NEARHUB_S3_PATH_STYLE: "true",
      });
      host = await startStorage(parseEnv("storage", storageEnv, env), {});
    });

    after(async () => {
      await host?.stop();
      await deleteNamespace(natsUrl, ns);
      await dir?.cleanup();
    });

    test("PutBlob, HasBlobs, StatBlob and GetBlob go through the bucket", async () => {
      const client = createClient(StorageService, `127.0.0.1:${host.grpcPort}`, {
        maxMessageBytes: 16 * MiB,
        metadata: adminAuth(ns),
      });
      try {
        const bytes = randomBytes(6 * MiB + 3);
        const sha = sha256(bytes);
        async function* requests() {
          yield { part: { case: "header" as const, value: { sha256: sha, size: BigInt(bytes.length) } } };
          for await (const chunk of chunksOf(bytes, MiB)) yield { part: { case: "chunk" as const, value: chunk } };
        }
        const put = await client.putBlob(requests());
        assert.equal(put.created, true);
        assert.equal(put.blob?.size, BigInt(bytes.length));
        assert.equal((await client.putBlob(requests())).created, false);

        const absent = "f".repeat(64);
        assert.deepEqual((await client.hasBlobs({ sha256: [sha, absent] })).present, [sha]);
        assert.equal((await client.statBlob({ sha256: sha })).blob?.size, BigInt(bytes.length));

        const parts: Uint8Array[] = [];
        for await (const response of client.getBlob({ sha256: sha })) parts.push(response.chunk);
        assert.equal(sha256(Buffer.concat(parts)), sha);

        const ranged: Uint8Array[] = [];
        for await (const response of client.getBlob({ sha256: sha, offset: 10n, length: 20n }))
          ranged.push(response.chunk);
        assert.deepEqual(Buffer.concat(ranged), bytes.subarray(10, 30));

        assert.deepEqual(await keys(bucket, ""), [`sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`]);
      } finally {
        client.$close();
      }
    });

    function chunkRequests(sessionId: string, index: number, bytes: Uint8Array) {
      return (async function* () {
        yield { part: { case: "header" as const, value: { sessionId, index, sha256: sha256(bytes) } } };
        for await (const piece of chunksOf(bytes, MiB)) yield { part: { case: "data" as const, value: piece } };
      })();
    }

    function clientOf(on: ServiceHost) {
      return createClient(StorageService, `127.0.0.1:${on.grpcPort}`, {
        maxMessageBytes: 16 * MiB,
        metadata: adminAuth(ns),
        timeoutMs: 60_000,
      });
    }

    const CHUNK = 5 * MiB;
    const chunkOf = (bytes: Buffer, i: number) => bytes.subarray(i * CHUNK, Math.min((i + 1) * CHUNK, bytes.length));
    const keyOf = (sha: string) => `sha256/${sha.slice(0, 2)}/${sha.slice(2, 4)}/${sha}`;

    test("a resumable upload completes straight to the blob's key; nothing is visible before, no temporary object", async () => {
      const client = clientOf(host);
      try {
        const bytes = randomBytes(3 * CHUNK - 11);
        const sha = sha256(bytes);
        const { session } = await client.startUpload({
          sha256: sha,
          size: BigInt(bytes.length),
          chunkSize: BigInt(CHUNK),
        });
        const id = session!.sessionId;
        await Promise.all([2, 0, 1].map((i) => client.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)))));
        await rejectsWith(client.statBlob({ sha256: sha }), Code.NotFound, /is not stored/);
        assert.ok(!(await keys(bucket, "")).includes(keyOf(sha)));
        assert.deepEqual(await keys(bucket, "tmp/"), []);
        assert.equal((await client.completeUpload({ sessionId: id })).created, true);
        assert.ok((await keys(bucket, "")).includes(keyOf(sha)));
        assert.deepEqual(await keys(bucket, "tmp/"), [], "no temporary object was written");
        const parts: Uint8Array[] = [];
        for await (const response of client.getBlob({ sha256: sha })) parts.push(response.chunk);
        assert.equal(sha256(Buffer.concat(parts)), sha);
        // Completing again answers from the session.
        assert.equal((await client.completeUpload({ sessionId: id })).created, false);
      } finally {
        client.$close();
      }
    });

    test("chunks that each match their own sha256 but not the whole leave nothing at the declared key, during or after", async () => {
      const client = clientOf(host);
      try {
        const bytes = randomBytes(2 * CHUNK + 1);
        const declared = sha256(Buffer.from("a different blob"));
        const { session } = await client.startUpload({
          sha256: declared,
          size: BigInt(bytes.length),
          chunkSize: BigInt(CHUNK),
        });
        const id = session!.sessionId;
        for (const i of [0, 1, 2]) {
          await client.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)));
          await rejectsWith(client.statBlob({ sha256: declared }), Code.NotFound, /is not stored/);
          assert.ok(!(await keys(bucket, "")).includes(keyOf(declared)));
        }
        await rejectsWith(
          client.completeUpload({ sessionId: id }),
          Code.InvalidArgument,
          new RegExp(
            `the assembled upload has sha256 ${sha256(bytes)} and ${bytes.length} bytes, not the declared ${declared}`,
          ),
        );
        await rejectsWith(client.statBlob({ sha256: declared }), Code.NotFound, /is not stored/);
        assert.ok(!(await keys(bucket, "")).includes(keyOf(declared)));
        assert.deepEqual(await keys(bucket, "tmp/"), []);
        await rejectsWith(client.getUploadStatus({ sessionId: id }), Code.NotFound, /does not exist/);
      } finally {
        client.$close();
      }
    });

    test("after a restart (new process, same KV and bucket) a session is resumed, verified by reading back and committed", async () => {
      const bytes = randomBytes(3 * CHUNK + 7);
      const sha = sha256(bytes);
      const first = await startStorage(parseEnv("storage", storageEnv, env), {});
      let id: string;
      const before = clientOf(first);
      try {
        const { session } = await before.startUpload({
          sha256: sha,
          size: BigInt(bytes.length),
          chunkSize: BigInt(CHUNK),
        });
        id = session!.sessionId;
        for (const i of [0, 1]) await before.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)));
      } finally {
        before.$close();
        await first.stop();
      }
      // The restarted process and another replica: neither has the in-order hash of chunks 0 and 1.
      const restarted = await startStorage(parseEnv("storage", storageEnv, env), {});
      const replica = await startStorage(parseEnv("storage", storageEnv, env), {});
      const after = clientOf(restarted);
      const other = clientOf(replica);
      try {
        const resumed = await after.startUpload({ sha256: sha, size: BigInt(bytes.length) });
        assert.equal(resumed.session?.sessionId, id, "the session survived the restart");
        // Its parts went to a multipart upload of the blob's key that only the lost hash could
        // verify (S3 cannot read back unfinished parts): they must be sent again.
        assert.deepEqual(resumed.session?.received, []);
        await rejectsWith(
          after.completeUpload({ sessionId: id }),
          Code.FailedPrecondition,
          /is missing 4 of 4 chunks \(0, 1, 2, 3\); upload them, then complete/,
        );
        // Out of order and across two processes: completion has no in-order digest and reads back.
        for (const i of [3, 1]) await other.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)));
        for (const i of [2, 0]) await after.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)));
        await rejectsWith(after.statBlob({ sha256: sha }), Code.NotFound, /is not stored/);
        assert.equal((await after.completeUpload({ sessionId: id })).created, true);
        const parts: Uint8Array[] = [];
        for await (const response of other.getBlob({ sha256: sha })) parts.push(response.chunk);
        assert.equal(sha256(Buffer.concat(parts)), sha);
        assert.ok((await keys(bucket, "")).includes(keyOf(sha)));
        assert.deepEqual(await keys(bucket, "tmp/"), [], "the read-back upload's temporary object is gone");
      } finally {
        after.$close();
        other.$close();
        await restarted.stop();
        await replica.stop();
      }
    });

    test("uploadFile sends again, by itself, the chunks a session stopped counting when another replica took it over", async () => {
      const replica = await startStorage(parseEnv("storage", storageEnv, env), {});
      const client = clientOf(host);
      const other = clientOf(replica);
      const file = await tempDir();
      try {
        const bytes = randomBytes(4 * CHUNK - 5);
        const sha = sha256(bytes);
        const path = `${file.path}/weights.bin`;
        await writeFile(path, bytes);
        // Chunk 0 goes to this replica, whose in-order hash is then the only one that covers it.
        const { session } = await client.startUpload({
          sha256: sha,
          size: BigInt(bytes.length),
          chunkSize: BigInt(CHUNK),
        });
        await client.uploadChunk(chunkRequests(session!.sessionId, 0, chunkOf(bytes, 0)));
        // A balancer in front: StartUpload reaches this replica (chunk 0 is in), the rest the other
        // one, whose first chunk moves the session to a read-back upload; chunk 0 then no longer
        // counts and completion says it is missing.
        const balanced = { ...other, startUpload: client.startUpload } as typeof other;
        const result = await uploadFile(balanced, path, {
          sha256: sha,
          size: bytes.length,
          chunkSize: CHUNK,
          parallel: 2,
        });
        assert.equal(result.created, true);
        assert.equal(result.chunksSkipped, 1, "chunk 0 was in when the upload started");
        assert.equal(result.chunksSent, 4, "chunks 1-3, then chunk 0 again");
        const parts: Uint8Array[] = [];
        for await (const response of client.getBlob({ sha256: sha })) parts.push(response.chunk);
        assert.equal(sha256(Buffer.concat(parts)), sha);
      } finally {
        client.$close();
        other.$close();
        await replica.stop();
        await file.cleanup();
      }
    });

    test("a chunk replaced after the in-order hash took it moves the session to a read-back upload; the rest is sent again", async () => {
      const client = clientOf(host);
      try {
        // More than the 64 MiB the hash holds back, so chunk 0 is hashed before it is replaced.
        const count = 14;
        const bytes = randomBytes(count * CHUNK);
        const sha = sha256(bytes);
        const { session } = await client.startUpload({
          sha256: sha,
          size: BigInt(bytes.length),
          chunkSize: BigInt(CHUNK),
        });
        const id = session!.sessionId;
        await client.uploadChunk(chunkRequests(id, 0, randomBytes(CHUNK)));
        for (let i = 1; i < count; i++) await client.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)));
        assert.equal((await client.uploadChunk(chunkRequests(id, 0, chunkOf(bytes, 0)))).stored, true);
        assert.deepEqual((await client.getUploadStatus({ sessionId: id })).session?.received, [0]);
        await rejectsWith(
          client.completeUpload({ sessionId: id }),
          Code.FailedPrecondition,
          new RegExp(`is missing ${count - 1} of ${count} chunks`),
        );
        await rejectsWith(client.statBlob({ sha256: sha }), Code.NotFound, /is not stored/);
        for (let i = 1; i < count; i++) await client.uploadChunk(chunkRequests(id, i, chunkOf(bytes, i)));
        assert.equal((await client.completeUpload({ sessionId: id })).created, true);
        const parts: Uint8Array[] = [];
        for await (const response of client.getBlob({ sha256: sha })) parts.push(response.chunk);
        assert.equal(sha256(Buffer.concat(parts)), sha);
        assert.deepEqual(await keys(bucket, "tmp/"), []);
      } finally {
        client.$close();
      }
    });

    test("a PutBlob whose bytes do not match its header is refused and stores nothing", async () => {
      const client = createClient(StorageService, `127.0.0.1:${host.grpcPort}`, { metadata: adminAuth(ns) });
      try {
        const bytes = randomBytes(1000);
        const declared = sha256(Buffer.from("other"));
        async function* requests() {
          yield { part: { case: "header" as const, value: { sha256: declared, size: BigInt(bytes.length) } } };
          yield { part: { case: "chunk" as const, value: bytes } };
        }
        await rejectsWith(
          client.putBlob(requests()),
          Code.InvalidArgument,
          /sha256 mismatch: declared .*; nothing was stored/,
        );
        await rejectsWith(client.statBlob({ sha256: declared }), Code.NotFound, /is not stored/);
        assert.deepEqual(await keys(bucket, "tmp/"), []);
      } finally {
        client.$close();
      }
    });
  });
});
