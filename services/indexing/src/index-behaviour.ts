/**
 * The behaviour every search backend must show, as one suite run against each backend
 * (`sqlite-index.test.ts`, `elasticsearch-index.test.ts`), so a green SQLite run and a green
 * Elasticsearch run prove the same contract.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { DocumentKind, SortDirection, SortField } from "@nearhub/proto/search";
import {
  newDocument,
  newQuery,
  remove,
  upsert,
  type IndexOp,
  type SearchDocument,
  type SearchIndex,
} from "./document.js";

/** A fresh, empty index and how to dispose of it. */
export type IndexFactory = () => Promise<{ index: SearchIndex; dispose: () => Promise<void> }>;

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 0, 1);

/** A small, realistic corpus: models, a dataset and git mirrors. */
export function corpus(): SearchDocument[] {
  return [
    newDocument({
      id: "google-bert/bert-base-uncased",
      kind: DocumentKind.MODEL,
      version: 1n,
      author: "google-bert",
      tags: ["transformers", "pytorch", "fill-mask", "en"],
      pipelineTag: "fill-mask",
      libraryName: "transformers",
      license: "apache-2.0",
      downloads: 50_000_000,
      likes: 2000,
      description: "BERT base model (uncased)",
      body: "Pretrained model on English language using a masked language modeling objective.",
      files: [
        { path: "config.json", size: 570 },
        { path: "model.safetensors", size: 440_449_768 },
      ],
      sizeBytes: 440_450_338,
      createdAtMs: T0,
      updatedAtMs: T0 + 3 * DAY,
      sha: "86b5e0934494bd15c9632b12f734a8a67f723594",
    }),
    newDocument({
      id: "openai-community/gpt2",
      kind: DocumentKind.MODEL,
      version: 1n,
      author: "openai-community",
      tags: ["transformers", "pytorch", "text-generation", "en"],
      pipelineTag: "text-generation",
      libraryName: "transformers",
      license: "mit",
      downloads: 20_000_000,
      likes: 3000,
      body: "GPT-2 is a transformers model pretrained on a very large corpus of English data.",
      files: [{ path: "pytorch_model.bin", size: 548_118_077 }],
      createdAtMs: T0 + DAY,
      updatedAtMs: T0 + 5 * DAY,
    }),
    newDocument({
      id: "Qwen/通义千问-7B",
      kind: DocumentKind.MODEL,
      version: 1n,
      author: "Qwen",
      title: "通义千问 7B",
      tags: ["transformers", "text-generation", "zh"],
      pipelineTag: "text-generation",
      libraryName: "transformers",
      license: "other",
      downloads: 900_000,
      likes: 500,
      body: "通义千问 是阿里云研发的大语言模型 🤗",
      createdAtMs: T0 + 2 * DAY,
      updatedAtMs: T0 + 2 * DAY,
    }),
    newDocument({
      id: "sentence-transformers/all-MiniLM-L6-v2",
      kind: DocumentKind.MODEL,
      version: 1n,
      author: "sentence-transformers",
      tags: ["sentence-transformers", "onnx", "feature-extraction"],
      pipelineTag: "sentence-similarity",
      libraryName: "sentence-transformers",
      license: "apache-2.0",
      downloads: 80_000_000,
      likes: 4000,
      body: "This is a sentence-transformers model: it maps sentences to a 384 dimensional dense vector space.",
      files: [{ path: "onnx/model.onnx", size: 90_000_000 }],
      createdAtMs: T0 + 3 * DAY,
      updatedAtMs: T0 + 1 * DAY,
    }),
    newDocument({
      id: "rajpurkar/squad",
      kind: DocumentKind.DATASET,
      version: 1n,
      author: "rajpurkar",
      tags: ["task_categories:question-answering", "en"],
      license: "cc-by-sa-4.0",
      downloads: 100_000,
      likes: 300,
      body: "Stanford Question Answering Dataset (SQuAD) is a reading comprehension dataset.",
      createdAtMs: T0,
      updatedAtMs: T0 + 4 * DAY,
    }),
    newDocument({
      id: "github.com/pytorch/pytorch",
      kind: DocumentKind.GIT_REPO,
      version: 3n,
      author: "pytorch",
      description: "pytorch/pytorch mirrored from github.com",
      body: "Tensors and Dynamic neural networks in Python with strong GPU acceleration",
      upstream: "github.com",
      state: "in_sync",
      defaultBranch: "main",
      refsCount: 120,
      sizeBytes: 1_500_000_000,
      createdAtMs: T0,
      updatedAtMs: T0 + 6 * DAY,
    }),
    newDocument({
      id: "gitlab.com/acme/rocket",
      kind: DocumentKind.GIT_REPO,
      version: 2n,
      author: "acme",
      description: "acme/rocket mirrored from gitlab.com",
      upstream: "gitlab.com",
      state: "failed",
      createdAtMs: T0,
      updatedAtMs: T0,
    }),
  ];
}

/** Shuffles deterministically (a seeded LCG), so a failing order can be replayed. */
function shuffled<T>(items: T[], seed: number): T[] {
  const out = [...items];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

const ids = (hits: Array<{ id: string }>) => hits.map((h) => h.id);

/** Registers the behaviour suite for one backend; `skip` (a reason) skips every test. */
export function indexBehaviour(backend: string, factory: IndexFactory, skip?: string): void {
  void describe(`search index behaviour: ${backend}`, () => {
    let index: SearchIndex;
    let dispose: () => Promise<void> = async () => undefined;
    const opts = skip ? { skip } : {};

    before(async () => {
      if (skip) return;
      ({ index, dispose } = await factory());
      await index.apply(corpus().map((doc) => ({ upsert: doc })));
    });
    after(async () => {
      await dispose();
    });

    void test("a document put in comes back out, whole", opts, async () => {
      const doc = await index.get("google-bert/bert-base-uncased");
      assert.ok(doc);
      const expected = corpus()[0];
      assert.deepEqual(doc, expected);
      assert.equal(await index.get("no/such-model"), undefined);
      assert.equal(await index.count(), corpus().length);
    });

    void test("terms, prefixes and phrases find documents by id, title, card text and file names", opts, async () => {
      const search = async (text: string, kind = DocumentKind.UNSPECIFIED) =>
        ids((await index.search(newQuery({ text, kind }))).hits);
      assert.deepEqual(await search("bert"), ["google-bert/bert-base-uncased"]);
      assert.ok((await search("gpt")).includes("openai-community/gpt2"), "prefix of the last word");
      assert.deepEqual(await search("masked language"), ["google-bert/bert-base-uncased"], "card text");
      assert.deepEqual(await search("safetensors"), ["google-bert/bert-base-uncased"], "file names");
      assert.deepEqual(await search("reading comprehension"), ["rajpurkar/squad"]);
      assert.deepEqual(await search("pytorch", DocumentKind.GIT_REPO), ["github.com/pytorch/pytorch"]);
      assert.deepEqual(await search("all-MiniLM"), ["sentence-transformers/all-MiniLM-L6-v2"]);
      assert.deepEqual(await search("zzzz-nothing-like-this"), []);
    });

    void test("relevance puts a name match above a card-text match", opts, async () => {
      const { hits } = await index.search(newQuery({ text: "transformers" }));
      assert.equal(hits[0]?.id, "sentence-transformers/all-MiniLM-L6-v2");
      assert.ok(ids(hits).includes("openai-community/gpt2"), "card text matches too");
      assert.ok((hits[0]?.score ?? 0) >= (hits.at(-1)?.score ?? 0));
    });

    void test(
      "filters: kind, author, tags (library, pipeline and license count), pipeline, library, license, upstream, state",
      opts,
      async () => {
        const find = async (filters: Parameters<typeof newQuery>[0]["filters"], kind = DocumentKind.UNSPECIFIED) =>
          ids((await index.search(newQuery({ kind, filters, sort: SortField.NAME }))).hits);
        assert.deepEqual(await find({}, DocumentKind.DATASET), ["rajpurkar/squad"]);
        assert.deepEqual(await find({ author: "OPENAI-community" }), ["openai-community/gpt2"], "case-insensitive");
        assert.deepEqual(await find({ tags: ["pytorch"] }), ["google-bert/bert-base-uncased", "openai-community/gpt2"]);
        assert.deepEqual(await find({ tags: ["pytorch", "text-generation"] }), ["openai-community/gpt2"], "all tags");
        assert.deepEqual(await find({ tags: ["sentence-transformers"] }), ["sentence-transformers/all-MiniLM-L6-v2"]);
        assert.deepEqual(await find({ tags: ["license:mit"] }), ["openai-community/gpt2"]);
        assert.deepEqual(await find({ pipelineTag: "text-generation" }), ["openai-community/gpt2", "Qwen/通义千问-7B"]);
        assert.deepEqual(await find({ library: "sentence-transformers" }), ["sentence-transformers/all-MiniLM-L6-v2"]);
        assert.deepEqual(await find({ license: "apache-2.0" }), [
          "google-bert/bert-base-uncased",
          "sentence-transformers/all-MiniLM-L6-v2",
        ]);
        assert.deepEqual(await find({ upstream: "gitlab.com" }), ["gitlab.com/acme/rocket"]);
        assert.deepEqual(await find({ state: "in_sync" }), ["github.com/pytorch/pytorch"]);
        assert.deepEqual(await find({ author: "nobody" }), []);
        // Text and filters together.
        const both = await index.search(newQuery({ text: "model", filters: { license: "mit" } }));
        assert.deepEqual(ids(both.hits), ["openai-community/gpt2"]);
      },
    );

    void test("sorts: downloads, likes, updated, created and name, both directions", opts, async () => {
      const models = async (sort: SortField, direction = SortDirection.UNSPECIFIED) =>
        ids((await index.search(newQuery({ kind: DocumentKind.MODEL, sort, direction }))).hits);
      const byDownloads = [
        "sentence-transformers/all-MiniLM-L6-v2",
        "google-bert/bert-base-uncased",
        "openai-community/gpt2",
        "Qwen/通义千问-7B",
      ];
      assert.deepEqual(await models(SortField.DOWNLOADS), byDownloads);
      assert.deepEqual(await models(SortField.DOWNLOADS, SortDirection.ASC), [...byDownloads].reverse());
      assert.deepEqual((await models(SortField.LIKES))[0], "sentence-transformers/all-MiniLM-L6-v2");
      assert.deepEqual((await models(SortField.UPDATED))[0], "openai-community/gpt2");
      assert.deepEqual((await models(SortField.CREATED))[0], "sentence-transformers/all-MiniLM-L6-v2");
      assert.deepEqual(await models(SortField.NAME), [
        "google-bert/bert-base-uncased",
        "openai-community/gpt2",
        "Qwen/通义千问-7B",
        "sentence-transformers/all-MiniLM-L6-v2",
      ]);
      assert.equal((await models(SortField.NAME, SortDirection.DESC))[0], "sentence-transformers/all-MiniLM-L6-v2");
      // No text and no sort: most recently updated first.
      const all = await index.search(newQuery({}));
      assert.equal(all.hits[0]?.id, "github.com/pytorch/pytorch");
      assert.equal(all.total, corpus().length);
    });

    void test("pages: offset and limit walk every result once, total stays put", opts, async () => {
      const seen: string[] = [];
      for (let offset = 0; offset < 10; offset += 3) {
        const page = await index.search(newQuery({ sort: SortField.NAME, limit: 3, offset }));
        assert.equal(page.total, corpus().length);
        seen.push(...ids(page.hits));
      }
      assert.deepEqual(
        seen,
        corpus()
          .map((d) => d.id)
          .sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : 1)),
      );
    });

    void test("pages of a ranked text query are the whole ranking, in order, once", opts, async () => {
      const whole = await index.search(newQuery({ text: "model", limit: 50 }));
      assert.ok(whole.total >= 3);
      const paged: string[] = [];
      for (let offset = 0; offset < whole.total; offset++) {
        const page = await index.search(newQuery({ text: "model", limit: 1, offset }));
        assert.equal(page.total, whole.total);
        paged.push(...ids(page.hits));
      }
      assert.deepEqual(paged, ids(whole.hits));
    });

    void test(
      "hostile text: operators, quotes, unicode, emoji, 10 KB and empty strings never throw",
      opts,
      async () => {
        const hostile = [
          "",
          "   ",
          'bert" OR "1"="1',
          "bert AND NOT gpt2",
          "NEAR(bert gpt2)",
          "* ^ : ( ) { } [ ] - + ~ \\",
          'unbalanced "quote',
          "id:bert",
          "bert*",
          "title : ^bert",
          "🤗",
          "🤗 bert",
          "\u0000\u0007 bert \u001f",
          "x".repeat(10_000),
          "bert ".repeat(2_000),
          "Ünïcödé façade",
          "'; DROP TABLE documents; --",
        ];
        for (const text of hostile) {
          const result = await index.search(newQuery({ text }));
          assert.ok(Array.isArray(result.hits), `result for ${JSON.stringify(text.slice(0, 40))}`);
        }
        assert.ok(ids((await index.search(newQuery({ text: 'bert" OR "1"="1' }))).hits).length <= 1);
        assert.deepEqual(ids((await index.search(newQuery({ text: "🤗 bert" }))).hits), [
          "google-bert/bert-base-uncased",
        ]);
        assert.deepEqual(ids((await index.search(newQuery({ text: "通义千问" }))).hits), ["Qwen/通义千问-7B"]);
        assert.deepEqual(
          ids((await index.search(newQuery({ text: "通义" }))).hits),
          ["Qwen/通义千问-7B"],
          "CJK prefix",
        );
        assert.equal(await index.count(), corpus().length, "nothing was dropped");
      },
    );

    void test("suggest completes ids and last path segments, per kind", opts, async () => {
      const s = async (prefix: string, kind = DocumentKind.UNSPECIFIED) => ids(await index.suggest(prefix, kind, 10));
      assert.deepEqual(await s("google-b"), ["google-bert/bert-base-uncased"]);
      assert.deepEqual(await s("gpt"), ["openai-community/gpt2"]);
      assert.deepEqual(await s("通义"), ["Qwen/通义千问-7B"]);
      assert.deepEqual(await s("pyt", DocumentKind.MODEL), []);
      assert.ok((await s("github.com/pyt", DocumentKind.GIT_REPO)).includes("github.com/pytorch/pytorch"));
      assert.deepEqual(await s(""), []);
      assert.deepEqual(await s("🤗🤗"), []);
    });

    void test(
      "versions: an older write never wins, equal versions re-apply, tombstones stop resurrection",
      opts,
      async () => {
        const id = "acme/versioned";
        const v = (version: bigint, downloads: number) =>
          newDocument({ id, kind: DocumentKind.MODEL, version, downloads, author: "acme" });
        assert.equal(await upsert(index, v(5n, 50)), true);
        assert.equal(await upsert(index, v(4n, 40)), false, "older");
        assert.equal((await index.get(id))?.downloads, 50);
        assert.equal(await upsert(index, v(5n, 51)), true, "same version re-applies (a replay)");
        assert.equal(await remove(index, id, 3n), false, "older removal");
        assert.ok(await index.get(id));
        assert.equal(await remove(index, id, 6n), true);
        assert.equal(await index.get(id), undefined);
        assert.deepEqual(ids((await index.search(newQuery({ text: "versioned" }))).hits), []);
        assert.deepEqual(ids(await index.suggest("acme/vers", DocumentKind.UNSPECIFIED, 5)), []);
        assert.equal(await upsert(index, v(5n, 52)), false, "a late add does not resurrect");
        assert.equal(await index.get(id), undefined);
        assert.equal(await upsert(index, v(7n, 70)), true, "a newer add does");
        assert.equal((await index.get(id))?.downloads, 70);
        assert.equal(await remove(index, id, 8n), true);
      },
    );

    void test("replayed and shuffled operations converge to the same index", opts, async () => {
      // The history of three documents: updates, a removal, a re-add.
      const history: IndexOp[] = [
        { upsert: newDocument({ id: "c/one", kind: DocumentKind.MODEL, version: 1n, downloads: 1, tags: ["a"] }) },
        { upsert: newDocument({ id: "c/one", kind: DocumentKind.MODEL, version: 2n, downloads: 2, tags: ["b"] }) },
        { upsert: newDocument({ id: "c/two", kind: DocumentKind.MODEL, version: 1n, downloads: 5 }) },
        { remove: { id: "c/two", version: 2n } },
        { upsert: newDocument({ id: "c/three", kind: DocumentKind.DATASET, version: 1n }) },
        { remove: { id: "c/three", version: 2n } },
        { upsert: newDocument({ id: "c/three", kind: DocumentKind.DATASET, version: 3n, likes: 9 }) },
      ];
      const state = async () => {
        const found = await index.search(newQuery({ text: "c", filters: {}, sort: SortField.NAME, limit: 50 }));
        const docs = await Promise.all(["c/one", "c/two", "c/three"].map((id) => index.get(id)));
        const tagged = ids((await index.search(newQuery({ filters: { tags: ["b"] } }))).hits);
        return { found: ids(found.hits).filter((id) => id.startsWith("c/")), docs, tagged };
      };
      await index.apply(history);
      const expected = await state();
      assert.deepEqual(expected.found, ["c/one", "c/three"]);
      assert.equal(expected.docs[0]?.downloads, 2);
      assert.equal(expected.docs[1], undefined);
      assert.equal(expected.docs[2]?.likes, 9);
      assert.deepEqual(expected.tagged, ["c/one"], "the old tag went with the old version");
      for (const seed of [1, 7, 42]) {
        // Replaying everything, in another order, one operation at a time.
        for (const op of shuffled(history, seed)) await index.apply([op]);
        assert.deepEqual(await state(), expected, `order ${seed}`);
      }
      await index.apply([{ remove: { id: "c/one", version: 10n } }, { remove: { id: "c/three", version: 10n } }]);
    });
  });
}
