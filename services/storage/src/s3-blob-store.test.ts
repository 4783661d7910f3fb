import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
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
import { Client } from "minio";
import { storageEnv } from "./config.js";
import { S3BlobStore, type S3BlobStoreOptions } from "./s3-blob-store.js";
import { startStorage } from "./service.js";

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
  /** s3rver (the fallback) has no ListMultipartUploads, which minio needs to upload in parts. */
  let multipart: boolean;

  before(async () => {
    multipart = Boolean(process.env["S3_ENDPOINT"]) || (await dockerAvailable());
    server = await s3();
    const url = new URL(server.endpoint);
    admin = new Client({
      endPoint: url.hostname,
      port: Number(url.port || (url.protocol === "https:" ? 443 : 80)),
      useSSL: url.protocol === "https:",
      accessKey: server.accessKey,
      secretKey: server.secretKey,
      region: server.region,
    });
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

  test("a blob larger than one part goes up in parts; a refused one leaves no object and no parts", async (t) => {
    if (!multipart) return t.skip("s3rver lacks ListMultipartUploads; set S3_ENDPOINT or run Docker for MinIO");
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
    assert.deepEqual(await keys(bucket, "tmp/"), []);
    const incomplete: unknown[] = [];
    for await (const upload of admin.listIncompleteUploads(bucket, "tmp/", true)) incomplete.push(upload);
    assert.deepEqual(incomplete, []);
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

  describe("the storage service over gRPC with NEARHUB_BLOB_BACKEND=s3", () => {
    let natsUrl: string;
    const ns = uniqueNamespace();
    let dir: Awaited<ReturnType<typeof tempDir>>;
    let host: ServiceHost;
    let bucket: string;

    before(async () => {
      natsUrl = (await nats()).url;
      dir = await tempDir();
      bucket = await server.createBucket();
      const env = serviceEnv(natsUrl, ns, dir.path, {
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
