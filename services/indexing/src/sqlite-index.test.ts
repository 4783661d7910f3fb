import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { DocumentKind } from "@nearhub/proto/search";
import { newDocument, newQuery } from "./document.js";
import { indexBehaviour } from "./index-behaviour.js";
import { SqliteSearchIndex, toFtsQuery } from "./sqlite-index.js";

indexBehaviour("sqlite", async () => {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
  const index = new SqliteSearchIndex(join(dir, "search.sqlite"));
  return {
    index,
    dispose: async () => {
      await index.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe("toFtsQuery", () => {
  test("quotes every token, doubles quotes, makes the last a prefix", () => {
    assert.equal(toFtsQuery("bert base"), '"bert" "base"*');
    assert.equal(toFtsQuery('say "hi"'), '"say" """hi"""*');
    assert.equal(toFtsQuery("a AND b OR NOT c"), '"a" "AND" "b" "OR" "NOT" "c"*');
    assert.equal(toFtsQuery("NEAR(a b)"), '"NEAR(a" "b)"*');
    assert.equal(toFtsQuery("org/model"), '"org" "model"*');
  });

  test("nothing searchable gives no expression", () => {
    for (const text of ["", "   ", "* - ^", "🤗", '""', "\u0000\u0001"])
      assert.equal(toFtsQuery(text), undefined, text);
  });

  test("long input is bounded: 32 tokens of 100 characters", () => {
    const expr = toFtsQuery(`${"y".repeat(10_000)} ${"word ".repeat(100)}`) ?? "";
    assert.equal(expr.split(" ").length, 32);
    assert.ok(expr.startsWith(`"${"y".repeat(100)}"`));
  });

  test("every expression is valid FTS5 syntax, whatever the input", () => {
    const db = new Database(":memory:");
    db.exec("CREATE VIRTUAL TABLE t USING fts5(x)");
    db.prepare("INSERT INTO t VALUES (?)").run("hello world");
    const inputs = [
      '"',
      '""',
      "(",
      ")",
      "a:b",
      "^a",
      "a*b",
      "-a",
      "+a",
      "NEAR(a,b)",
      "a\"b'c",
      "\\",
      "{a}",
      "🤗x",
      "中文",
    ];
    for (const input of inputs) {
      const expr = toFtsQuery(input);
      if (expr) assert.doesNotThrow(() => db.prepare("SELECT * FROM t WHERE t MATCH ?").all(expr), input);
    }
    db.close();
  });
});

describe("SqliteSearchIndex files", () => {
  test("an index file keeps its documents across reopen; an older layout is marked fresh", async () => {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
    try {
      const path = join(dir, "s.sqlite");
      const first = new SqliteSearchIndex(path);
      assert.equal(first.fresh, true);
      await first.apply([{ upsert: newDocument({ id: "a/b", kind: DocumentKind.MODEL, version: 1n }) }]);
      await first.close();
      const again = new SqliteSearchIndex(path);
      assert.equal(again.fresh, false);
      assert.equal((await again.search(newQuery({ text: "b" }))).total, 1);
      await again.close();

      // A file from the first layout (user_version 0) is dropped and rebuilt.
      const oldPath = join(dir, "old.sqlite");
      const old = new Database(oldPath);
      old.exec("CREATE TABLE documents (rowid INTEGER PRIMARY KEY, id TEXT)");
      old.close();
      const upgraded = new SqliteSearchIndex(oldPath);
      assert.equal(upgraded.fresh, true);
      assert.equal(await upgraded.count(), 0);
      await upgraded.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("the brute-force scan finds substrings (the benchmark's baseline)", async () => {
    const index = new SqliteSearchIndex(":memory:");
    await index.apply([
      { upsert: newDocument({ id: "acme/rocket-50%", kind: DocumentKind.MODEL, version: 1n, body: "fast" }) },
      { upsert: newDocument({ id: "acme/other", kind: DocumentKind.MODEL, version: 1n, body: "slow" }) },
    ]);
    assert.deepEqual(index.scanSync("ocket", 10), ["acme/rocket-50%"]);
    assert.deepEqual(index.scanSync("50%", 10), ["acme/rocket-50%"]);
    assert.deepEqual(index.scanSync("%", 10), ["acme/rocket-50%"], "LIKE wildcards are literal");
    await index.close();
  });
});
