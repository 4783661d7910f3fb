import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { open, readdir, writeFile } from "node:fs/promises";
import { createServer, get, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough } from "node:stream";
import { join } from "node:path";
import { describe, test } from "node:test";
import { createLogger } from "@nearhub/platform";
import { eventually, tempDir } from "@nearhub/testing";
import { Registry } from "prom-client";
import { BlobCache, BlobMismatch, sendBuffersHeld, sendFile, type BlobReader } from "./hf-cache.js";

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

  test("a hit sends any range of a multi-chunk blob exactly over HTTP, from reused buffers", async () => {
    const dir = await tempDir();
    const MiB = 1024 * 1024;
    const data = randomBytes(9 * MiB + 123);
    const cache = new BlobCache(dir.path, 64 * MiB, logger, new Registry());
    await cache.init();
    await cache.putVerified(sha(data), data);
    // Each request opens its own reader, as the edge does, and sends the range asked in the URL.
    const server = createServer((req, res) => {
      const [start, end] = (req.url ?? "").slice(1).split("-").map(Number) as [number, number];
      void cache
        .open(sha(data), data.length, () => Promise.reject(new Error("a hit reads no source")))
        .then((reader: BlobReader) => {
          assert.equal(reader.cached, true);
          res.writeHead(200, { "content-length": String(end - start + 1) });
          return reader.send!(res, start, end);
        });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const ranges: Array<[number, number]> = [
        [0, data.length - 1],
        [0, 0],
        [MiB - 1, MiB], // across the first read boundary
        [4 * MiB - 1, 4 * MiB],
        [5, 8 * MiB + 7], // full reads and a partial one
        [data.length - 1, data.length - 1],
        [3, 4 * MiB - 1],
        [MiB, 2 * MiB], // one full read and one byte
      ];
      // A few at once: the spare buffers are shared between transfers.
      await Promise.all(
        ranges.map(async ([start, end]) => {
          const body = await fetchBody(`http://127.0.0.1:${port}/${start}-${end}`);
          assert.equal(body.length, end - start + 1, `range ${start}-${end}: length`);
          assert.ok(body.equals(data.subarray(start, end + 1)), `range ${start}-${end}: bytes`);
        }),
      );
      await eventually(async () => (sendBuffersHeld() === 0 ? true : undefined), 5000, "send buffers handed back");
    } finally {
      server.close();
      await dir.cleanup();
    }
  });

  test("sendFile stops and closes the file when the client goes away mid-transfer", async () => {
    const dir = await tempDir();
    const path = join(dir.path, "big");
    const size = 64 * 1024 * 1024;
    await writeFile(path, Buffer.alloc(size, 7));
    let handle: Awaited<ReturnType<typeof open>> | undefined;
    let sent!: Promise<void>;
    let started!: () => void;
    const sending = new Promise<void>((resolve) => (started = resolve));
    const server = createServer((_req, res) => {
      void open(path, "r").then((fh) => {
        handle = fh;
        res.writeHead(200, { "content-length": String(size) });
        sent = sendFile(fh, res, 0, size - 1);
        started();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        const req = get(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, (res: IncomingMessage) => {
          res.once("data", () => {
            req.destroy(); // the client hangs up after the first bytes
            resolve();
          });
        });
        req.on("error", (error) => (req.destroyed ? undefined : reject(error)));
      });
      await sending;
      await sent; // resolves instead of waiting forever for buffers that never come back
      assert.equal(handle?.fd, -1, "the file was closed");
      await eventually(async () => (sendBuffersHeld() === 0 ? true : undefined), 5000, "send buffers freed");
    } finally {
      server.close();
      await dir.cleanup();
    }
  });

  test("sendFile rejects, naming the byte, when the file is shorter than the range", async () => {
    const dir = await tempDir();
    const path = join(dir.path, "short");
    await writeFile(path, randomBytes(1000));
    const sink = new PassThrough();
    sink.resume();
    try {
      await assert.rejects(sendFile(await open(path, "r"), sink, 0, 4999), /ended early at byte 1000/);
      await assert.rejects(sendFile(await open(path, "r"), sink, 0, 16 * 1024 * 1024), /ended early at byte 1000/);
    } finally {
      await dir.cleanup();
    }
  });
});

/** GETs a URL and returns the whole body. */
function fetchBody(url: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      const parts: Buffer[] = [];
      res.on("data", (c: Buffer) => parts.push(c));
      res.on("end", () => resolve(Buffer.concat(parts)));
      res.on("error", reject);
    }).on("error", reject);
  });
}
