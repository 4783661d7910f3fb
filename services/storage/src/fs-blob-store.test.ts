import { test } from "node:test";
import assert from "node:assert/strict";
import { GroupSync } from "./fs-blob-store.js";

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
