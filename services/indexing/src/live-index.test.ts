import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setImmediate as tick } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { DocumentKind } from "@nearhub/proto/search";
import { newDocument, newQuery, upsert, type SearchDocument } from "./document.js";
import { LiveIndex, SqliteBackend, type Replay } from "./live-index.js";

const model = (id: string, version = 1n, extra: Partial<SearchDocument> = {}) =>
  newDocument({ id, kind: DocumentKind.MODEL, version, ...extra });

/** A replay of a fixed history, yielding to the event loop between events like a real stream. */
function replayOf(history: SearchDocument[], opts: { failAt?: number } = {}): Replay {
  return async (target, progress, signal) => {
    let n = 0;
    for (const doc of history) {
      if (signal.aborted) throw new Error("aborted");
      if (opts.failAt === n) throw new Error("the stream went away");
      await target.apply([{ upsert: doc }]);
      n++;
      progress(n, history.length);
      await tick();
    }
  };
}

describe("LiveIndex over SQLite files", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "nearhub-live-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("a fresh index is marked so and filled from the replay; a reopened one is not", async () => {
    const live = await LiveIndex.open(new SqliteBackend(dir, "fresh"));
    assert.equal(live.fresh, true);
    await live.fill(replayOf([model("a/one"), model("a/two")]), new AbortController().signal);
    assert.equal(live.fresh, false);
    assert.equal(await live.count(), 2);
    await live.close();
    // Reopened: the same file, not fresh, nothing to replay.
    const again = await LiveIndex.open(new SqliteBackend(dir, "fresh"));
    assert.equal(again.fresh, false);
    assert.equal(await again.count(), 2);
    await again.close();
  });

  test("a rebuild switches to a complete new index with no moment of empty results", async () => {
    const backend = new SqliteBackend(dir, "swap");
    const live = await LiveIndex.open(backend);
    await upsert(live, model("acme/rocket", 1n, { downloads: 1 }));
    const history = [model("acme/rocket", 1n, { downloads: 1 })];
    for (let i = 0; i < 200; i++) history.push(model(`bulk/m${i}`));
    const before = live.name;

    const seen: number[] = [];
    let liveWriteDone = false;
    const progress: Array<{ done: boolean; eventsReplayed: number }> = [];
    for await (const p of live.rebuild(replayOf(history), new AbortController().signal)) {
      progress.push(p);
      // Reads during the rebuild still answer from the old index.
      seen.push((await live.search(newQuery({ text: "rocket" }))).total);
      // A live event during the rebuild reaches both indices.
      if (!liveWriteDone) {
        await upsert(live, model("acme/live-during-rebuild", 1n));
        liveWriteDone = true;
      }
    }
    assert.ok(
      seen.every((n) => n === 1),
      `every read during the rebuild found the document: ${seen.join(",")}`,
    );
    const last = progress.at(-1);
    assert.equal(last?.done, true);
    assert.equal(last?.eventsReplayed, history.length);
    assert.ok(progress.length > 2, "progress was reported along the way");
    assert.notEqual(live.name, before, "reads moved to the new index");
    assert.equal(await live.count(), 202, "the replay plus the live write");
    assert.ok(await live.get("acme/live-during-rebuild"));
    // The pointer names the new file; the old one is gone.
    assert.equal(join(dir, readFileSync(join(dir, "swap.current"), "utf8")), live.name);
    assert.equal(existsSync(before), false);
    await live.close();
  });

  test("a failed rebuild keeps the old index and removes the partial one", async () => {
    const backend = new SqliteBackend(dir, "fail");
    const live = await LiveIndex.open(backend);
    await upsert(live, model("keep/me"));
    const name = live.name;
    await assert.rejects(async () => {
      for await (const _ of live.rebuild(
        replayOf([model("a"), model("b"), model("c")], { failAt: 2 }),
        new AbortController().signal,
      )) {
        // drain
      }
    }, /the stream went away/);
    assert.equal(live.name, name);
    assert.ok(await live.get("keep/me"));
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.startsWith("fail-") && f.endsWith(".sqlite")),
      [name.slice(dir.length + 1)],
    );
    await live.close();
  });

  test("one rebuild at a time", async () => {
    const live = await LiveIndex.open(new SqliteBackend(dir, "once"));
    const first = live.rebuild(replayOf([model("a"), model("b")]), new AbortController().signal);
    await first.next();
    const second = live.rebuild(replayOf([]), new AbortController().signal);
    await assert.rejects(second.next(), /already running/);
    for await (const _ of first) {
      // finish the first
    }
    await live.close();
  });
});
