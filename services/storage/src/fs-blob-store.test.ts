import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, open, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Code, NearhubError } from "@nearhub/platform";
import { FsBlobStore, GroupSync } from "./fs-blob-store.js";
import { sharedBuffer } from "./hash-worker.js";

/** A GroupSync whose syncs finish when the test says so; `log` records starts and ends. */
function controlled() {
  const log: string[] = [];
  const finish: Array<(error?: Error) => void> = [];
  const group = new GroupSync(
    (key) =>
      new Promise<void>((resolve, reject) => {
        const n = finish.length;
        log.push(`start ${key} ${n}`);
        finish.push((error) => {
          log.push(`end ${key} ${n}`);
          if (error) reject(error);
          else resolve();
        });
      }),
  );
  return { group, log, finish };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

test("GroupSync: callers during a running sync share the next one, which starts after it", async () => {
  const { group, log, finish } = controlled();
  const done: string[] = [];
  const a = group.sync("d").then(() => done.push("a"));
  await tick();
  const b = group.sync("d").then(() => done.push("b"));
  const c = group.sync("d").then(() => done.push("c"));
  const other = group.sync("e").then(() => done.push("other"));
  await tick();
  assert.deepEqual(log, ["start d 0", "start e 1"]);
  finish[0]!();
  await a;
  await tick();
  // a is answered by the first sync; b and c wait for a second, started after they asked.
  assert.deepEqual(done, ["a"]);
  assert.deepEqual(log, ["start d 0", "start e 1", "end d 0", "start d 2"]);
  finish[2]!();
  await Promise.all([b, c]);
  finish[1]!();
  await other;
  assert.deepEqual(done.sort(), ["a", "b", "c", "other"]);
  // Nothing is left running: the next caller starts a fresh sync at once.
  void group.sync("d");
  await tick();
  assert.equal(log.at(-1), "start d 3");
  finish[3]!();
});

test("GroupSync: a failed sync fails its callers, and the next callers get a new sync", async () => {
  const { group, log, finish } = controlled();
  const a = group.sync("d");
  const b = group.sync("d");
  await tick();
  finish[0]!(new Error("EIO"));
  await assert.rejects(a, /EIO/);
  await tick();
  assert.deepEqual(log, ["start d 0", "end d 0", "start d 1"]);
  finish[1]!();
  await b;
});

const MiB = 1024 * 1024;

/** A blob written as a chunked upload from `memory(chunk)` buffers, then read back in ranges. */
async function chunkedRoundTrip(
  directIo: boolean,
  chunkSize: number,
  size: number,
  memory: (bytes: Buffer) => Buffer,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-fs-direct-"));
  try {
    const store = new FsBlobStore(dir, { directIo });
    await store.check();
    const blob = randomBytes(size);
    const sha256 = createHash("sha256").update(blob).digest("hex");
    const handle = await store.beginChunked(randomUUID(), size);
    const count = Math.ceil(size / chunkSize);
    // Out of order, as parallel clients send them.
    for (const index of [...Array(count).keys()].reverse()) {
      const offset = index * chunkSize;
      await store.writeChunk(handle, index, offset, memory(blob.subarray(offset, offset + chunkSize)));
    }
    const parts = [...Array(count).keys()].map((index) => ({ index, etag: "", size: 0 }));
    assert.deepEqual(await store.completeChunked(handle, { sha256, size }, parts), { created: true });
    assert.deepEqual(await store.stat(sha256), { sha256, size });
    const read = async (offset: number, length: number | undefined) => {
      const pieces: Uint8Array[] = [];
      for await (const piece of store.get(sha256, offset, length)) pieces.push(piece);
      return Buffer.concat(pieces);
    };
    const cases: Array<[number, number | undefined]> = [
      [0, undefined],
      [0, size],
      [1, size - 1],
      [4095, 4 * MiB + 3],
      [4 * MiB - 4096, 4097],
      [size - 1, 1],
      [size - 1, undefined],
      [size, undefined],
      [3 * MiB + 17, 2 * MiB],
    ];
    for (const [offset, length] of cases) {
      const expected = blob.subarray(offset, length === undefined ? size : offset + length);
      assert.ok((await read(offset, length)).equals(expected), `bytes ${offset} + ${String(length)}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The chunk's bytes in page-aligned shared memory, as the upload sessions hand them over. */
const aligned = (bytes: Buffer) => {
  const b = sharedBuffer(bytes.byteLength);
  bytes.copy(b);
  return b;
};
/** The chunk's bytes at an odd address (O_DIRECT refuses them with EINVAL). */
const unaligned = (bytes: Buffer) => {
  const b = Buffer.allocUnsafeSlow(bytes.byteLength + 1).subarray(1);
  bytes.copy(b);
  return b;
};
/** Malloc'd memory: offset 0 in its buffer, but its address is not page-aligned. */
const mallocd = (bytes: Buffer) => {
  const b = Buffer.allocUnsafeSlow(bytes.byteLength);
  bytes.copy(b);
  return b;
};

test("chunked uploads read back the same with and without O_DIRECT, from any memory", async () => {
  // Aligned chunk offsets with a short tail; then offsets that are not block multiples.
  for (const [chunkSize, size] of [
    [5 * MiB, 12 * MiB + 123],
    [5 * MiB + 1234, 11 * MiB],
  ] as const) {
    for (const directIo of [true, false]) {
      for (const memory of [aligned, unaligned, mallocd]) {
        await chunkedRoundTrip(directIo, chunkSize, size, memory);
      }
    }
  }
});

test("a chunk written to an upload that is gone is NOT_FOUND, direct or not", async () => {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-fs-direct-"));
  try {
    for (const directIo of [true, false]) {
      const store = new FsBlobStore(dir, { directIo });
      await store.check();
      const handle = await store.beginChunked(randomUUID(), 5 * MiB);
      await store.abortChunked(handle);
      await assert.rejects(
        store.writeChunk(handle, 0, 0, aligned(randomBytes(5 * MiB))),
        (error: unknown) => error instanceof NearhubError && error.code === Code.NotFound,
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("sharedBuffer gives exactly the bytes asked for, in shared memory at offset 0", () => {
  for (const size of [1, 4096, 5 * MiB + 1, 64 * MiB]) {
    const b = sharedBuffer(size);
    assert.equal(b.byteLength, size);
    assert.equal(b.byteOffset, 0);
    assert.ok(b.buffer instanceof SharedArrayBuffer);
  }
});

test("a packed blob read after its put comes from memory; a scrub's read (fromDisk) and a fresh instance see the disk; a removal ends the copy", async () => {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-hot-"));
  const store = new FsBlobStore(dir);
  try {
    await store.check();
    const bytes = randomBytes(4096);
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const chunks = (async function* () {
      yield bytes;
    })();
    assert.deepEqual(await store.put({ sha256, size: bytes.byteLength }, chunks), { created: true });
    // A later record, so the damaged one below is not mistaken for a torn tail by a new instance.
    const next = randomBytes(100);
    await store.put(
      { sha256: createHash("sha256").update(next).digest("hex"), size: next.byteLength },
      (async function* () {
        yield next;
      })(),
    );
    const read = async (s: FsBlobStore, options?: { fromDisk?: boolean }, offset = 0, length?: number) => {
      const parts: Uint8Array[] = [];
      for await (const part of s.get(sha256, offset, length, options)) parts.push(part);
      return Buffer.concat(parts);
    };
    // Flip one byte of the record on disk, behind the store's back.
    const packs = join(dir, "packs");
    let flipped = 0;
    for (const name of (await readdir(packs)).filter((n) => n.endsWith(".pack"))) {
      const at = (await readFile(join(packs, name))).indexOf(bytes);
      if (at < 0) continue;
      const file = await open(join(packs, name), "r+");
      await file.write(Buffer.from([bytes[100]! ^ 0xff]), 0, 1, at + 100);
      await file.close();
      flipped++;
    }
    assert.equal(flipped, 1);
    // The copy verified at put time answers reads, whole and in ranges...
    assert.ok((await read(store)).equals(bytes));
    assert.ok((await read(store, {}, 90, 20)).equals(bytes.subarray(90, 110)));
    assert.ok((await read(store, {}, 4000)).equals(bytes.subarray(4000)));
    assert.equal((await read(store, {}, 4096)).byteLength, 0);
    // ...but a scrub reads the disk and so finds the damage, as does another instance.
    assert.equal((await read(store, { fromDisk: true }))[100], bytes[100]! ^ 0xff);
    const other = new FsBlobStore(dir);
    try {
      assert.equal((await read(other))[100], bytes[100]! ^ 0xff);
    } finally {
      await other.close();
    }
    assert.equal(await store.remove(sha256), true);
    assert.equal(await store.stat(sha256), undefined);
    await assert.rejects(read(store));
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});
