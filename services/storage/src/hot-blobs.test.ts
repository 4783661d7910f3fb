import { test } from "node:test";
import assert from "node:assert/strict";
import { HotBlobs } from "./hot-blobs.js";

const blob = (n: number, fill: number) => Buffer.alloc(n, fill);

test("keeps blobs up to the byte limit, dropping the least recently used first", () => {
  const hot = new HotBlobs(300, 200);
  hot.set("a", blob(100, 1));
  hot.set("b", blob(100, 2));
  hot.set("c", blob(100, 3));
  assert.equal(hot.bytes, 300);
  // A read makes "a" the most recent: "b" is the one to go.
  assert.equal(hot.get("a")?.[0], 1);
  hot.set("d", blob(100, 4));
  assert.equal(hot.get("b"), undefined);
  assert.deepEqual(
    ["a", "c", "d"].map((k) => hot.get(k)?.[0]),
    [1, 3, 4],
  );
  assert.equal(hot.bytes, 300);
  assert.equal(hot.size, 3);
});

test("a blob over the largest kept, or over the whole limit, is not kept; a limit of 0 keeps nothing", () => {
  const hot = new HotBlobs(1000, 200);
  hot.set("big", blob(201, 1));
  assert.equal(hot.get("big"), undefined);
  const small = new HotBlobs(100, 200);
  small.set("x", blob(150, 1));
  assert.equal(small.get("x"), undefined);
  const off = new HotBlobs(0, 200);
  off.set("y", blob(1, 1));
  assert.equal(off.get("y"), undefined);
  assert.equal(off.bytes, 0);
});

test("keeps a copy: the caller's buffer changing later, or the larger buffer it views, does not reach the cache", () => {
  const hot = new HotBlobs(1000, 200);
  const message = blob(64, 7);
  const view = message.subarray(8, 40);
  hot.set("v", view);
  message.fill(0);
  const held = hot.get("v")!;
  assert.equal(held.byteLength, 32);
  assert.ok(held.every((b) => b === 7));
  assert.notEqual(held.buffer, message.buffer);
});

test("delete drops a blob and its bytes; setting a held sha again changes nothing", () => {
  const hot = new HotBlobs(1000, 200);
  hot.set("a", blob(10, 1));
  hot.set("a", blob(20, 2));
  assert.equal(hot.bytes, 10);
  assert.equal(hot.get("a")?.[0], 1);
  hot.delete("a");
  hot.delete("never");
  assert.equal(hot.get("a"), undefined);
  assert.equal(hot.bytes, 0);
  assert.equal(hot.size, 0);
});
