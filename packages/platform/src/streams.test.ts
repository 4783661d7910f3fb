import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { StorageType } from "@nats-io/jetstream";
import { nanos } from "@nats-io/nats-core";
import { Names } from "./names.js";
import { auditStream, eventsStream } from "./streams.js";

const DAY = 86_400_000;

describe("eventsStream", () => {
  test("holds every public event of the namespace for 30 days, on file", () => {
    const names = new Names("tns");
    assert.deepEqual(eventsStream(names), {
      name: "TNS_EVENTS",
      subjects: ["nearhub_tns.events.>"],
      storage: StorageType.File,
      max_age: nanos(30 * DAY),
      duplicate_window: nanos(10 * 60 * 1000),
    });
    assert.deepEqual(eventsStream(new Names()).subjects, ["nearhub.events.>"]);
  });

  test("every publisher declares the same settings", () => {
    assert.deepEqual(eventsStream(new Names("a")), eventsStream(new Names("a")));
  });
});

describe("auditStream", () => {
  test("is append-only, kept 400 days by default, and only created by other services", () => {
    const decl = auditStream(new Names());
    assert.equal(decl.name, "AUDIT");
    assert.deepEqual(decl.subjects, ["nearhub.audit.>"]);
    assert.equal(decl.max_age, nanos(400 * DAY));
    assert.equal(decl.deny_delete, true);
    assert.equal(decl.deny_purge, true);
    assert.equal(decl.storage, StorageType.File);
    assert.equal(decl.createOnly, true);
  });

  test("the audit service owns the retention and updates it", () => {
    const decl = auditStream(new Names("tx"), 30, false);
    assert.equal(decl.name, "TX_AUDIT");
    assert.equal(decl.max_age, nanos(30 * DAY));
    assert.equal(decl.createOnly, false);
  });

  test("the audit subjects never overlap the event subjects", () => {
    const names = new Names();
    const audit = auditStream(names).subjects[0]!.replace(/>$/, "");
    const events = eventsStream(names).subjects[0]!.replace(/>$/, "");
    assert.ok(!audit.startsWith(events) && !events.startsWith(audit));
  });
});
