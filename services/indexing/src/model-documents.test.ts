import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { RevisionSchema } from "@nearhub/proto/registry";
import { DocumentKind } from "@nearhub/proto/search";
import { documentId, modelDocument, parseCard } from "./model-documents.js";

describe("model cards and documents", () => {
  test("front matter gives tags, languages, pipeline, library and license; the text stays searchable", () => {
    const card = parseCard(
      [
        "---",
        "license: apache-2.0",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "language:",
        "  - en",
        "  - zh",
        "tags: [llama, gguf]",
        "---",
        "# Rocket 7B",
        "",
        "A small model that flies.",
      ].join("\n"),
    );
    assert.deepEqual(card.tags, ["llama", "gguf", "en", "zh"]);
    assert.equal(card.pipelineTag, "text-generation");
    assert.equal(card.libraryName, "transformers");
    assert.equal(card.license, "apache-2.0");
    assert.equal(card.text, "# Rocket 7B\n\nA small model that flies.");
  });

  test("cards without, or with broken, front matter are indexed by their text", () => {
    assert.deepEqual(parseCard("# Just text"), {
      tags: [],
      pipelineTag: "",
      libraryName: "",
      license: "",
      text: "# Just text",
    });
    const broken = parseCard("---\nlicense: [unclosed\n---\nbody");
    assert.equal(broken.license, "");
    assert.equal(broken.text, "body");
    const scalarTags = parseCard("---\ntags: 7\nlicense: 3\n---\n");
    assert.deepEqual(scalarTags.tags, ["7"]);
    assert.equal(scalarTags.license, "3");
    const notAMap = parseCard("---\n- a\n- b\n---\ntext");
    assert.deepEqual(notAMap.tags, []);
    assert.equal(parseCard("").text, "");
  });

  test("a revision becomes a document: files, sizes, commit, author, description", () => {
    const revision = create(RevisionSchema, {
      commit: "c".repeat(40),
      createdAt: timestampFromMs(Date.UTC(2026, 1, 1)),
      entries: [
        { path: "README.md", sha256: "a".repeat(64), size: 100n },
        { path: "model.safetensors", sha256: "b".repeat(64), size: 5_000_000n, lfs: true },
      ],
    });
    const card = parseCard("---\nlicense: mit\n---\n\n# Rocket 7B\nflies");
    const doc = modelDocument(DocumentKind.MODEL, "acme/rocket-7b", revision, card, 9n);
    assert.equal(doc.id, "acme/rocket-7b");
    assert.equal(doc.author, "acme");
    assert.equal(doc.description, "Rocket 7B");
    assert.deepEqual(doc.files, [
      { path: "README.md", size: 100 },
      { path: "model.safetensors", size: 5_000_000 },
    ]);
    assert.equal(doc.sizeBytes, 5_000_100);
    assert.equal(doc.sha, "c".repeat(40));
    assert.equal(doc.updatedAtMs, Date.UTC(2026, 1, 1));
    assert.equal(doc.version, 9n);
    const dataset = modelDocument(DocumentKind.DATASET, "squad", revision, card, 1n);
    assert.equal(dataset.id, "datasets/squad", "datasets never collide with models");
    assert.equal(dataset.title, "squad");
    assert.equal(dataset.author, "", "a repo without an owner");
    assert.equal(documentId(DocumentKind.MODEL, "bert-base-uncased"), "bert-base-uncased");
  });
});
