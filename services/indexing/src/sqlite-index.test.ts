import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { DocumentKind, SortDirection, SortField } from "@nearhub/proto/search";
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

describe("SqliteSearchIndex large match sets", () => {
  // A small threshold makes a few dozen documents a "large" match set, so the tiered ranking
  // and the sort-bucket walk run here exactly as they do on a million documents.
  const DAY = 86_400_000;
  const names = ["alpha", "Beta", "gamma", "Ärger", "通义", "_under", "9lives", "zeta", "~tilde"];
  const docs = Array.from({ length: 45 }, (_, i) =>
    newDocument({
      id: `${names[i % names.length] ?? "x"}-org/model-${String(i).padStart(2, "0")}`,
      kind: i % 5 === 0 ? DocumentKind.DATASET : DocumentKind.MODEL,
      version: 1n,
      author: i % 2 === 0 ? "even" : "odd",
      tags: i % 3 === 0 ? ["pytorch"] : ["jax"],
      // Repeats on purpose: ties are broken by id.
      downloads: (i * 7919) % 23 === 0 ? 0 : 2 ** (i % 17) * 1000 + (i % 4),
      likes: (i * 31) % 11,
      createdAtMs: Date.UTC(2025, 0, 1) + ((i * 13) % 40) * DAY + i,
      updatedAtMs: Date.UTC(2025, 0, 1) + ((i * 17) % 9) * DAY,
      body: `shared words ${i % 4 === 0 ? "shared shared" : ""} number${i}`,
    }),
  );
  const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  const sortKey: Record<number, (d: (typeof docs)[number]) => number | string> = {
    [SortField.DOWNLOADS]: (d) => d.downloads,
    [SortField.LIKES]: (d) => d.likes,
    [SortField.UPDATED]: (d) => d.updatedAtMs,
    [SortField.CREATED]: (d) => d.createdAtMs,
    [SortField.NAME]: (d) => d.id.toLowerCase(),
  };

  async function withIndex(
    run: (index: SqliteSearchIndex) => Promise<void>,
    options: { walkFrom?: number } = {},
  ): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
    const index = new SqliteSearchIndex(join(dir, "s.sqlite"), { exactMatches: 4, ...options });
    try {
      await index.apply(docs.map((doc) => ({ upsert: doc })));
      await run(index);
    } finally {
      await index.close();
      await rm(dir, { recursive: true, force: true });
    }
  }

  async function pages(index: SqliteSearchIndex, fields: Parameters<typeof newQuery>[0], size: number) {
    const seen: string[] = [];
    const totals = new Set<number>();
    for (let offset = 0; offset < 60; offset += size) {
      const page = await index.search(newQuery({ ...fields, limit: size, offset }));
      totals.add(page.total);
      seen.push(...page.hits.map((h) => h.id));
    }
    return { seen, totals: [...totals] };
  }

  // The same order whichever way a sort bucket is put in order: its matches sorted, or its
  // index range walked (every bucket of more than `walkFrom` matches; 0: all of them, so
  // sparse buckets also exercise the walk giving up). "shared" is in every document: its
  // first pages come from the walk over the whole sort index.
  for (const walkFrom of [1000, 0]) {
    test(`every sort field, both directions, with text, filters or both: exact order, every page (buckets walked from ${walkFrom} matches)`, async () => {
      await withIndex(
        async (index) => {
          const cases: Array<{ text?: string; filters?: { tags?: string[]; author?: string }; kind?: DocumentKind }> = [
            { text: "shared" },
            { filters: { tags: ["pytorch"] } },
            { text: "words", filters: { author: "even" }, kind: DocumentKind.MODEL },
            // Filters only, with an author: sorted by name, from the (author, name) index.
            { filters: { author: "EVEN" } },
            { filters: { author: "odd" }, kind: DocumentKind.MODEL },
          ];
          for (const c of cases) {
            const matching = docs.filter(
              (d) =>
                (!c.filters?.tags || d.tags.includes(c.filters.tags[0] ?? "")) &&
                (!c.filters?.author || d.author === c.filters.author.toLowerCase()) &&
                (!c.kind || d.kind === c.kind),
            );
            for (const sort of [
              SortField.DOWNLOADS,
              SortField.LIKES,
              SortField.UPDATED,
              SortField.CREATED,
              SortField.NAME,
            ]) {
              for (const direction of [SortDirection.ASC, SortDirection.DESC]) {
                const key = sortKey[sort] as (d: (typeof docs)[number]) => number | string;
                const sign = direction === SortDirection.DESC ? -1 : 1;
                const expected = [...matching]
                  .sort((a, b) => {
                    const ka = key(a);
                    const kb = key(b);
                    const primary =
                      typeof ka === "string" || typeof kb === "string"
                        ? byBytes(String(ka), String(kb))
                        : ka === kb
                          ? 0
                          : ka < kb
                            ? -1
                            : 1;
                    return primary !== 0 ? sign * primary : byBytes(a.id, b.id);
                  })
                  .map((d) => d.id);
                const label = `${JSON.stringify(c)} sort ${sort} direction ${direction}`;
                for (const size of [1, 7, 100]) {
                  const { seen, totals } = await pages(index, { ...c, sort, direction }, size);
                  assert.deepEqual(seen, expected, `${label}, pages of ${size}`);
                  assert.deepEqual(totals, [expected.length], `${label}: total`);
                }
              }
            }
          }
        },
        { walkFrom },
      );
    });
  }

  test("relevance beyond the thresholds: name matches first, then the rest, each most downloaded first", async () => {
    await withIndex(async (index) => {
      // Popularity is coarse: buckets of 1/16 of a doubling of downloads, ties by insertion.
      const bucket = (downloads: number) => (downloads > 0 ? 1 + Math.floor(Math.log2(downloads) * 16) : 0);
      const byPopularity = (hits: Array<{ downloads: number }>) =>
        hits.every((h, i) => i === 0 || bucket(h.downloads) <= bucket(hits[i - 1]?.downloads ?? 0));
      // "shared" is in every card and no name: more matches than the threshold, so the
      // ranking is popularity, on every page alike.
      const whole = await index.search(newQuery({ text: "shared", limit: 100 }));
      assert.equal(whole.total, docs.length);
      const ids = whole.hits.map((h) => h.id);
      assert.deepEqual([...ids].sort(), docs.map((d) => d.id).sort(), "every match once");
      assert.ok(byPopularity(whole.hits), "most downloaded first");
      for (const size of [1, 3, 4, 9]) {
        const { seen, totals } = await pages(index, { text: "shared" }, size);
        assert.deepEqual(seen, ids, `pages of ${size}`);
        assert.deepEqual(totals, [docs.length]);
      }
      // "gamma" is in the names (id and title) of some documents and in no card.
      const named = await index.search(newQuery({ text: "gamma", limit: 100 }));
      assert.deepEqual(
        named.hits.map((h) => h.id).sort(),
        docs
          .filter((d) => d.id.startsWith("gamma-"))
          .map((d) => d.id)
          .sort(),
      );
      assert.ok(byPopularity(named.hits));
      assert.ok(named.hits.every((h) => h.score === named.hits[0]?.score));
      // A page past the end is empty and still counts every match.
      const past = await index.search(newQuery({ text: "shared", limit: 10, offset: 200 }));
      assert.deepEqual(past.hits, []);
      assert.equal(past.total, docs.length);
    });
  });

  test("a word in more documents than the bm25 bound: names above cards, filters still apply", async () => {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
    // Every threshold low: 3 documents make a common word.
    const index = new SqliteSearchIndex(join(dir, "s.sqlite"), { exactMatches: 100, maxRankedDf: 3 });
    try {
      const doc = (id: string, downloads: number, body: string, author = "acme") =>
        newDocument({ id, kind: DocumentKind.MODEL, version: 1n, downloads, body, author });
      await index.apply([
        { upsert: doc("acme/card-only-big", 900, "rocket engines") },
        { upsert: doc("acme/card-only-small", 10, "rocket science") },
        { upsert: doc("acme/rocket-small", 20, "fast") },
        { upsert: doc("acme/rocket-big", 500, "fast") },
        { upsert: doc("other/rocket-x", 5000, "fast", "other") },
      ]);
      const found = await index.search(newQuery({ text: "rocket" }));
      assert.deepEqual(
        found.hits.map((h) => h.id),
        ["other/rocket-x", "acme/rocket-big", "acme/rocket-small", "acme/card-only-big", "acme/card-only-small"],
      );
      assert.ok((found.hits[0]?.score ?? 0) > (found.hits.at(-1)?.score ?? 0), "name matches score higher");
      assert.equal(found.total, 5);
      const filtered = await index.search(newQuery({ text: "rock", filters: { author: "acme" }, limit: 2, offset: 1 }));
      assert.deepEqual(
        filtered.hits.map((h) => h.id),
        ["acme/rocket-small", "acme/card-only-big"],
      );
      assert.equal(filtered.total, 4);
      // A rare word is still ranked by bm25.
      const rare = await index.search(newQuery({ text: "science" }));
      assert.deepEqual(
        rare.hits.map((h) => h.id),
        ["acme/card-only-small"],
      );
      assert.ok((rare.hits[0]?.score ?? 0) > 0 && rare.hits[0]?.score !== 1 && rare.hits[0]?.score !== 2);
    } finally {
      await index.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("the last word completes from the vocabulary: new words, many completions, accents, CJK", async () => {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
    const index = new SqliteSearchIndex(join(dir, "s.sqlite"));
    try {
      const doc = (id: string, body: string, version = 1n) =>
        newDocument({ id, kind: DocumentKind.MODEL, version, body });
      // More completions of "zzword" than the expansion takes: FTS5's own prefix query answers.
      await index.apply(Array.from({ length: 250 }, (_, i) => ({ upsert: doc(`m/many-${i}`, `zzword${i}`) })));
      const many = await index.search(newQuery({ text: "zzword", limit: 100 }));
      assert.equal(many.total, 250);
      assert.equal((await index.search(newQuery({ text: "zzword24" }))).total, 11, "zzword24 and zzword240…249");
      await index.apply([{ upsert: doc("m/late", "Ärger über 通义千问 Straße") }]);
      const find = async (text: string) => (await index.search(newQuery({ text }))).hits.map((h) => h.id);
      assert.deepEqual(await find("ärg"), ["m/late"], "accented prefix");
      assert.deepEqual(await find("arge"), ["m/late"], "diacritics folded");
      assert.deepEqual(await find("ÜBER"), ["m/late"]);
      assert.deepEqual(await find("通义"), ["m/late"], "CJK prefix");
      assert.deepEqual(await find("straß"), ["m/late"]);
      assert.deepEqual(await find("STRA"), ["m/late"]);
      // The card changes: the old words no longer match, the new ones do.
      await index.apply([{ upsert: doc("m/late", "quieter words", 2n) }]);
      assert.deepEqual(await find("ärger"), []);
      assert.deepEqual(await find("quiet"), ["m/late"]);
      await index.apply([{ remove: { id: "m/late", version: 3n } }]);
      assert.deepEqual(await find("quiet"), []);
    } finally {
      await index.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("query plans from the word counts: exact word first, split words, kinds, facet-shaped words", async () => {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
    // Every threshold low, so the plans for common words run on a few documents.
    const index = new SqliteSearchIndex(join(dir, "s.sqlite"), { exactMatches: 2, maxRankedDf: 2 });
    try {
      const doc = (id: string, body: string, downloads = 0, kind = DocumentKind.MODEL) =>
        newDocument({ id, kind, version: 1n, body, downloads });
      await index.apply([
        ...Array.from({ length: 250 }, (_, i) => ({ upsert: doc(`m/many-${i}`, `qqword${i} fine-tuned`, 1000 + i) })),
        { upsert: doc("m/word", "qqword alone", 1) },
        { upsert: doc("m/word2", "qqword again fine-tuner", 2) },
        { upsert: doc("d/data", "qqword in a dataset", 3, DocumentKind.DATASET) },
        { upsert: doc("m/shape", "s2x0 and f0123456789abcdef") },
      ]);
      const ids = async (text: string, extra: Partial<Parameters<typeof newQuery>[0]> = {}) => {
        const r = await index.search(newQuery({ text, limit: 300, ...extra }));
        return { ids: r.hits.map((h) => h.id), total: r.total };
      };
      // More completions than are spelled: documents with the word itself first, then the rest.
      const word = await ids("qqword");
      assert.deepEqual(word.ids.slice(0, 3), ["d/data", "m/word2", "m/word"]);
      assert.equal(word.total, 253);
      assert.equal(new Set(word.ids).size, 253);
      const paged = await ids("qqword", { offset: 2, limit: 3 });
      assert.deepEqual(paged.ids, word.ids.slice(2, 5));
      assert.equal(paged.total, 253);
      // A last word FTS5 cuts in two completes on its last part, as a phrase.
      assert.equal((await ids("fine-tune")).total, 251);
      assert.equal((await ids("fine-tuned")).total, 250);
      assert.deepEqual((await ids("tuned-fine")).ids, []);
      // Most documents are models: "model" is asked as "none of the other kinds".
      assert.equal((await ids("qqword", { kind: DocumentKind.MODEL })).total, 252);
      assert.deepEqual((await ids("qqword", { kind: DocumentKind.DATASET })).ids, ["d/data"]);
      // Words shaped like facet tokens find text, never the facets of every document.
      assert.deepEqual((await ids("s2x0")).ids, ["m/shape"]);
      assert.deepEqual((await ids("f0123456789abcdef")).ids, ["m/shape"]);
      // Counts follow updates and removals.
      await index.apply([
        { upsert: { ...doc("m/word", "other text", 1), version: 2n } },
        { remove: { id: "m/word2", version: 2n } },
      ]);
      assert.equal((await ids("qqword")).total, 251);
      assert.deepEqual((await ids("qqword", { limit: 1 })).ids, ["d/data"]);
      assert.equal((await ids("qqword", { kind: DocumentKind.MODEL })).total, 250);
    } finally {
      await index.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("updates and removals move documents between tiers and buckets", async () => {
    await withIndex(async (index) => {
      const last = docs[docs.length - 1];
      assert.ok(last);
      await index.apply([{ upsert: { ...last, version: 2n, downloads: 10 ** 12, likes: 999 } }]);
      const top = await index.search(newQuery({ text: "shared", limit: 1 }));
      assert.equal(top.hits[0]?.id, last.id, "now the most downloaded: first tier");
      const liked = await index.search(newQuery({ text: "words", sort: SortField.LIKES, limit: 1 }));
      assert.equal(liked.hits[0]?.id, last.id);
      await index.apply([{ remove: { id: last.id, version: 3n } }]);
      const after = await index.search(newQuery({ text: "shared", limit: 100 }));
      assert.equal(after.total, docs.length - 1);
      assert.ok(!after.hits.some((h) => h.id === last.id));
      const sorted = await index.search(newQuery({ text: "words", sort: SortField.LIKES, limit: 100 }));
      assert.ok(!sorted.hits.some((h) => h.id === last.id));
    });
  });
});

describe("SqliteSearchIndex sort walks", () => {
  // Two hundred documents in one name bucket ("a…"), two of them matching, at its end: a walk of the
  // bucket in name order gives up (it would read most of the bucket for two matches) and the
  // two are sorted instead; the other direction finds them first. Both give the exact order.
  test("a bucket walk that reads too far sorts the matches instead: the same pages", async () => {
    const index = new SqliteSearchIndex(":memory:", { exactMatches: 1, walkFrom: 0 });
    try {
      await index.apply(
        Array.from({ length: 200 }, (_, i) => ({
          upsert: newDocument({
            id: `alpha-org/m-${String(i).padStart(3, "0")}`,
            kind: DocumentKind.MODEL,
            version: 1n,
            downloads: 1000 + i,
            body: i >= 198 ? "needle hay" : "hay",
          }),
        })),
      );
      const page = async (direction: SortDirection, offset: number) =>
        (await index.search(newQuery({ text: "needle", sort: SortField.NAME, direction, limit: 1, offset }))).hits.map(
          (h) => h.id,
        );
      assert.deepEqual(await page(SortDirection.ASC, 0), ["alpha-org/m-198"]);
      assert.deepEqual(await page(SortDirection.ASC, 1), ["alpha-org/m-199"]);
      assert.deepEqual(await page(SortDirection.ASC, 2), []);
      assert.deepEqual(await page(SortDirection.DESC, 0), ["alpha-org/m-199"]);
      assert.deepEqual(await page(SortDirection.DESC, 1), ["alpha-org/m-198"]);
      // Most downloaded first: the walk of the downloads index, and its give-up, agree.
      const top = await index.search(newQuery({ text: "needle", sort: SortField.DOWNLOADS, limit: 5 }));
      assert.deepEqual(
        top.hits.map((h) => h.id),
        ["alpha-org/m-199", "alpha-org/m-198"],
      );
      assert.equal(top.total, 2);
      // "hay" is in every document: the first pages come from a walk over the whole name index.
      for (const [offset, limit] of [
        [0, 3],
        [37, 3],
        [197, 5],
      ] as const) {
        const hay = await index.search(newQuery({ text: "hay", sort: SortField.NAME, limit, offset }));
        assert.deepEqual(
          hay.hits.map((h) => h.id),
          Array.from({ length: 200 }, (_, i) => `alpha-org/m-${String(i).padStart(3, "0")}`).slice(
            offset,
            offset + limit,
          ),
        );
        assert.equal(hay.total, 200);
      }
    } finally {
      await index.close();
    }
  });

  test("an author filter sorted by name: any value, the same answer as the full-text path", async () => {
    const authors = ['O"Brien', "100%", "Ärger", "a_b", "ab"];
    const index = new SqliteSearchIndex(":memory:", { exactMatches: 1 });
    try {
      await index.apply(
        authors.flatMap((author, a) =>
          Array.from({ length: 6 }, (_, i) => ({
            upsert: newDocument({
              id: `${author}/m-${i}`,
              kind: i % 3 === 0 ? DocumentKind.DATASET : DocumentKind.MODEL,
              version: 1n,
              author,
              pipelineTag: i % 2 === 0 ? "fill-mask" : "",
              downloads: a * 10 + i,
            }),
          })),
        ),
      );
      for (const author of [...authors, 'o"brien', "ÄRGER", "a%", "a_", "%", "' OR 1=1 --", "x".repeat(200)]) {
        for (const filters of [{ author }, { author, pipelineTag: "FILL-MASK" }]) {
          for (const kind of [DocumentKind.UNSPECIFIED, DocumentKind.MODEL]) {
            const expected = authors
              .filter((a) => a.toLowerCase() === author.toLowerCase())
              .flatMap((a) => Array.from({ length: 6 }, (_, i) => ({ id: `${a}/m-${i}`, i })))
              .filter(({ i }) => (!filters.pipelineTag || i % 2 === 0) && (!kind || i % 3 !== 0))
              .map(({ id }) => id)
              .sort((x, y) => Buffer.compare(Buffer.from(x.toLowerCase()), Buffer.from(y.toLowerCase())));
            const found = await index.search(newQuery({ filters, kind, sort: SortField.NAME, limit: 100 }));
            assert.deepEqual(
              found.hits.map((h) => h.id),
              expected,
              JSON.stringify({ filters, kind }),
            );
            assert.equal(found.total, expected.length);
          }
        }
      }
    } finally {
      await index.close();
    }
  });
});

describe("SqliteSearchIndex totals and file lists", () => {
  test("totals are exact to 1,000, a lower bound beyond; paging goes on past it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-index-"));
    const index = new SqliteSearchIndex(join(dir, "search.sqlite"));
    try {
      const n = 1_050;
      index.applySync(
        Array.from({ length: n }, (_, i) => ({
          upsert: newDocument({
            id: `acme/m${i}`,
            kind: DocumentKind.MODEL,
            version: 1n,
            author: i % 2 === 0 ? "even" : "odd",
            body: "plenty of words",
            downloads: i,
            files: [{ path: "model.safetensors", size: 10 }],
          }),
        })),
      );
      for (const fields of [
        { text: "plenty" },
        {},
        { kind: DocumentKind.MODEL },
        { text: "plenty", sort: SortField.NAME },
      ]) {
        const first = index.searchSync(newQuery({ ...fields }));
        assert.equal(first.hits.length, 20);
        assert.ok(first.total === 1_000 && first.totalIsLowerBound, `${JSON.stringify(fields)}: ${first.total}`);
      }
      const half = index.searchSync(newQuery({ text: "plenty", filters: { author: "even" } }));
      assert.deepEqual([half.total, half.totalIsLowerBound], [n / 2, false]);
      // A page past the bound counts to its end: exact again once the matches end there.
      const seen = new Set<string>();
      for (let offset = 0; offset < n + 100; offset += 100) {
        const page = index.searchSync(newQuery({ text: "plenty", limit: 100, offset }));
        for (const h of page.hits) seen.add(h.id);
        if (offset + 100 < n) assert.ok(page.totalIsLowerBound && page.total === Math.max(1_000, offset + 100));
        else assert.deepEqual([page.total, page.totalIsLowerBound], [n, false]);
      }
      assert.equal(seen.size, n, "every match on some page");
      // File lists only on request.
      assert.deepEqual(index.searchSync(newQuery({ text: "plenty", limit: 1 })).hits[0]?.files, []);
      assert.deepEqual(index.searchSync(newQuery({ text: "plenty", limit: 1, includeFiles: true })).hits[0]?.files, [
        { path: "model.safetensors", size: 10 },
      ]);
      assert.deepEqual(index.searchSync(newQuery({ limit: 1, includeFiles: true })).hits[0]?.files, [
        { path: "model.safetensors", size: 10 },
      ]);
    } finally {
      await index.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
