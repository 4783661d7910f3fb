import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { createLogger } from "@nearhub/platform";
import { tempDir } from "@nearhub/testing";
import { Registry } from "prom-client";
import { BlobCache, BlobMismatch } from "./hf-cache.js";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const logger = createLogger({ service: "test", level: "silent" });

async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function* chunks(data: Buffer, gate?: Promise<void>): AsyncIterable<Uint8Array> {
  const half = data.length >> 1;
  yield data.subarray(0, half);
  await gate;
  yield data.subarray(half);
}

describe("the edge's hot blob cache", () => {
  test("one fill for concurrent readers; ranges of a partial blob; the last byte waits for verification", async () => {
    const dir = await tempDir();
    try {
      const cache = new BlobCache(dir.path, 64 * 1024 * 1024, logger, new Registry());
      await cache.init();
      const data = randomBytes(1 << 20);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let sources = 0;
      const source = () => {
        sources++;
        return Promise.resolve(chunks(data, gate));
      };
      const a = await cache.open(sha(data), data.length, source);
      const b = await cache.open(sha(data), data.length, source);
      assert.equal(sources, 1);
      assert.equal(a.cached, false);
      // The first half is there: a range inside it completes before the rest arrives.
      const early = await collect(b.stream(10, 1000));
      assert.deepEqual(early, data.subarray(10, 1001));
      const whole = collect(a.stream(0, data.length - 1));
      release();
      assert.deepEqual(await whole, data);
      await cache.settled(sha(data));
      const c = await cache.open(sha(data), data.length, source);
      assert.equal(c.cached, true);
      assert.deepEqual(await collect(c.stream(data.length - 5, data.length - 1)), data.subarray(-5));
    } finally {
      await dir.cleanup();
    }
  });

  test("bytes that do not hash to the name fail every reader and leave nothing behind", async () => {
    const dir = await tempDir();
    try {
      const cache = new BlobCache(dir.path, 64 * 1024 * 1024, logger, new Registry());
      await cache.init();
      const data = randomBytes(4096);
      const wrong = Buffer.from(data);
      wrong[100] = wrong[100]! ^ 1;
      const reader = await cache.open(sha(data), data.length, () => Promise.resolve(chunks(wrong)));
      await assert.rejects(collect(reader.stream(0, data.length - 1)), BlobMismatch);
      await cache.settled(sha(data));
      assert.equal(cache.has(sha(data)), false);
      assert.deepEqual(await readdir(join(dir.path, "blobs")), []);
      assert.deepEqual(await readdir(join(dir.path, "tmp")), []);
    } finally {
      await dir.cleanup();
    }
  });

  test("least recently used blobs are evicted past the size bound; the index survives a restart", async () => {
    const dir = await tempDir();
    try {
      const cache = new BlobCache(dir.path, 1024 * 1024 + 10, logger, new Registry());
      await cache.init();
      const blobs = [randomBytes(400 * 1024), randomBytes(400 * 1024), randomBytes(400 * 1024)];
      await cache.putVerified(sha(blobs[0]!), blobs[0]!);
      await cache.putVerified(sha(blobs[1]!), blobs[1]!);
      const touched = await cache.open(sha(blobs[0]!), blobs[0]!.length, () => Promise.reject(new Error("not used")));
      await collect(touched.stream(0, 0)); // a read makes blob 0 the most recently used
      await cache.putVerified(sha(blobs[2]!), blobs[2]!);
      assert.equal(cache.has(sha(blobs[1]!)), false, "the least recently used one went");
      assert.equal(cache.has(sha(blobs[0]!)), true);
      assert.equal(cache.has(sha(blobs[2]!)), true);
      const again = new BlobCache(dir.path, 1024 * 1024 + 10, logger, new Registry());
      await again.init();
      assert.equal(again.has(sha(blobs[2]!)), true);
    } finally {
      await dir.cleanup();
    }
  });
});
