import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AuditEventSchema, AuditRecordSchema, Decision, type AuditRecord } from "@nearhub/proto/audit";
import Database from "better-sqlite3";
import { GENESIS_HASH, keyIdOf, recordHash, signRecord, verifyTrail, type TrailEntry } from "./chain.js";
import { IndexCheck } from "./index-check.js";
import { RecordIndex } from "./record-index.js";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const keyId = keyIdOf(publicKey);
const keys = new Map([[keyId, publicKey]]);

function chain(n: number): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prevHash = GENESIS_HASH;
  for (let i = 1; i <= n; i++) {
    const event = create(AuditEventSchema, {
      id: `e${i}`,
      time: timestampFromMs(1_700_000_000_000 + i),
      actor: "user:alice",
      action: "blob.put",
      resource: `sha256:${i}`,
      decision: Decision.ALLOW,
    });
    const at = 1_700_000_001_000 + i;
    const hash = recordHash(prevHash, BigInt(i), at, event);
    out.push(
      create(AuditRecordSchema, {
        sequence: BigInt(i),
        event,
        recordedAt: timestampFromMs(at),
        prevHash,
        hash,
        keyId,
        signature: signRecord({ hash, keyId }, privateKey),
      }),
    );
    prevHash = hash;
  }
  return out;
}

// Stream sequence of record i: records interleaved with a checkpoint after every third.
const streamSeqOf = (sequence: bigint) => Number(sequence) + Math.floor((Number(sequence) - 1) / 3);

async function* entries(records: AuditRecord[]): AsyncIterable<TrailEntry> {
  for (const record of records) yield { kind: "record", record, streamSeq: streamSeqOf(record.sequence) };
}

describe("query index cross-check", () => {
  let dir: string;
  let n = 0;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "nearhub-index-check-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A fresh index holding `records`, the raw database beside it, and a verify over both. */
  const setup = (records: AuditRecord[], indexed = records) => {
    const path = join(dir, `index-${n++}.sqlite`);
    const index = new RecordIndex(path);
    index.insertMany(indexed.map((record) => ({ record, streamSeq: streamSeqOf(record.sequence) })));
    const raw = new Database(path);
    const verify = (since = 0n, indexedThrough = records.at(-1)?.sequence ?? 0n) =>
      verifyTrail(
        entries(records),
        keys,
        since,
        new IndexCheck({
          index,
          sinceSequence: since,
          indexedThrough,
          // The stream: `indexed` may run past the records this verify walks (written since).
          lookup: async (streamSeq) => indexed.find((r) => streamSeqOf(r.sequence) === streamSeq),
        }),
      );
    return { index, raw, verify, close: () => (raw.close(), index.close()) };
  };

  test("an index that copies the trail verifies, also from the middle and across pages", async () => {
    const records = chain(2500);
    const { verify, close } = setup(records);
    try {
      let verdict = await verify();
      assert.equal(verdict.ok, true, verdict.problem);
      assert.equal(verdict.recordsChecked, 2500);
      verdict = await verify(1200n);
      assert.equal(verdict.ok, true, verdict.problem);
      assert.equal(verdict.recordsChecked, 1301);
    } finally {
      close();
    }
  });

  test("every column queries use is compared with the trail", async () => {
    const records = chain(6);
    const cases: Array<[string, unknown, RegExp]> = [
      ["actor", "user:bob", /actor is "user:bob" in the index but "user:alice" in the trail/],
      ["action", "blob.get", /action is "blob.get"/],
      ["resource", "sha256:other", /resource is "sha256:other"/],
      ["decision", Decision.DENY, /decision is "2" in the index but "1"/],
      ["time_ms", 5, /time_ms is "5"/],
      ["recorded_ms", 5, /recorded_ms is "5"/],
      ["hash", "f".repeat(64), /hash is "f{64}"/],
      ["prev_hash", "0".repeat(64), /prev_hash is "0{64}"/],
      ["event_id", "e99", /event_id is "e99"/],
      ["trail_seq", 99, /trail_seq is "99"/],
      ["signature", "", /signature is ""/],
      ["event_json", "{}", /event_json differs from the event in the trail/],
      ["event_json", "[1", /event_json is not an audit event/],
    ];
    for (const [column, value, problem] of cases) {
      const { raw, verify, close } = setup(records);
      try {
        raw.prepare(`UPDATE records SET ${column} = ? WHERE seq = 4`).run(value);
        const verdict = await verify();
        assert.equal(verdict.ok, false, column);
        assert.equal(verdict.firstBrokenSequence, 4n, column);
        assert.match(verdict.problem, /the query index row of record 4 was altered/, column);
        assert.match(verdict.problem, problem, column);
      } finally {
        close();
      }
    }
  });

  test("a missing row, a row before the first record and a row after the last are named", async () => {
    const records = chain(5);
    let { raw, verify, close } = setup(records);
    try {
      raw.prepare("DELETE FROM records WHERE seq = 2").run();
      const verdict = await verify();
      assert.equal(verdict.firstBrokenSequence, 2n);
      assert.match(verdict.problem, /record 2 is missing from the query index/);
      // The newest record may not be indexed yet when verify begins: that is no fault.
      raw.prepare("DELETE FROM records WHERE seq = 5").run();
      assert.equal((await verify(3n, 4n)).ok, true);
      assert.match((await verify(3n, 5n)).problem, /record 5 is missing/);
    } finally {
      close();
    }

    ({ raw, verify, close } = setup(records.slice(1), records));
    try {
      // The trail starts at record 2 (say, record 1 aged out): a row for 1 has no record.
      const extra = await verify();
      assert.equal(extra.firstBrokenSequence, 1n);
      assert.match(extra.problem, /has a row for record 1 that the trail does not hold/);
    } finally {
      close();
    }

    const trail = chain(7);
    ({ raw, verify, close } = setup(trail.slice(0, 5), trail));
    try {
      // Rows past the records the check covers must be copies of trail records written since…
      assert.equal((await verify(0n, 5n)).ok, true);
      // …and one that points at no such record is named.
      raw.prepare("UPDATE records SET hash = ? WHERE seq = 7").run("a".repeat(64));
      const verdict = await verify(0n, 5n);
      assert.equal(verdict.firstBrokenSequence, 7n);
      assert.match(verdict.problem, /row for record 7 that the trail does not hold/);
    } finally {
      close();
    }
  });

  test("an index made before records were signed gains the columns and is named until rebuilt", async () => {
    const path = join(dir, "old.sqlite");
    const old = new Database(path);
    old.exec(`CREATE TABLE records (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, trail_seq INTEGER NOT NULL,
      prev_hash TEXT NOT NULL, hash TEXT NOT NULL, time_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
      resource TEXT NOT NULL, decision INTEGER NOT NULL, recorded_ms INTEGER NOT NULL, event_json TEXT NOT NULL)`);
    const record = chain(1)[0]!;
    old
      .prepare("INSERT INTO records VALUES (1, 'e1', 1, ?, ?, ?, 'user:alice', 'blob.put', 'sha256:1', 1, ?, ?)")
      .run(record.prevHash, record.hash, 1_700_000_000_001, 1_700_000_001_001, JSON.stringify({ id: "e1" }));
    old.close();
    const index = new RecordIndex(path);
    try {
      const [row] = index.rows(0n, 10);
      assert.equal(row?.key_id, "");
      assert.equal(row?.signature, "");
      const verdict = await verifyTrail(
        entries([record]),
        keys,
        0n,
        new IndexCheck({ index, sinceSequence: 0n, indexedThrough: 1n, lookup: () => Promise.resolve(undefined) }),
      );
      assert.match(verdict.problem, /row of record 1 was altered: key_id is "" in the index/);
    } finally {
      index.close();
    }
  });
});
