import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Names } from "./names.js";

describe("Names", () => {
  test("production uses the bare names", () => {
    const names = new Names();
    assert.equal(names.namespace, "");
    assert.equal(names.root, "nearhub");
    assert.equal(names.eventSubject("mirror", "added"), "nearhub.events.mirror.added");
    assert.equal(names.auditSubject("sync", "mirror.add"), "nearhub.audit.sync.mirror.add");
    assert.equal(names.subject("jobs.sync"), "nearhub.jobs.sync");
    assert.equal(names.stream("EVENTS"), "EVENTS");
    assert.equal(names.bucket("mirrors"), "mirrors");
    assert.equal(names.durable("indexer"), "indexer");
  });

  test("a namespace isolates every subject, stream and bucket", () => {
    const names = new Names("t1x9");
    assert.equal(names.root, "nearhub_t1x9");
    assert.equal(names.eventSubject("storage", "blob.stored"), "nearhub_t1x9.events.storage.blob.stored");
    assert.equal(names.auditSubject("edge", "login"), "nearhub_t1x9.audit.edge.login");
    assert.equal(names.subject("dlq.>"), "nearhub_t1x9.dlq.>");
    assert.equal(names.stream("EVENTS"), "T1X9_EVENTS");
    assert.equal(names.bucket("mirrors"), "t1x9_mirrors");
  });

  test("two namespaces never share a subject, stream or bucket", () => {
    const a = new Names("ta");
    const b = new Names("tb");
    const prod = new Names();
    const all = [a, b, prod];
    const distinct = (f: (n: Names) => string) => assert.equal(new Set(all.map(f)).size, all.length);
    distinct((n) => n.eventSubject("mirror", "added"));
    distinct((n) => n.subject("dlq.EVENTS.x"));
    distinct((n) => n.stream("EVENTS"));
    distinct((n) => n.bucket("mirrors"));
    // A namespaced subject is never caught by production's wildcard, nor the reverse.
    assert.ok(!a.eventSubject("mirror", "added").startsWith(`${prod.root}.`));
    assert.ok(!prod.eventSubject("mirror", "added").startsWith(`${a.root}.`));
  });

  test("names are valid for JetStream (no dots or spaces in stream and bucket names)", () => {
    const names = new Names("abc123");
    for (const name of [names.stream("DEAD_LETTERS"), names.bucket("upload_sessions")]) {
      assert.match(name, /^[A-Za-z0-9_-]+$/);
    }
  });
});
