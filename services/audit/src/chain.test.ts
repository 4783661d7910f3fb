import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AuditCheckpointSchema, AuditEventSchema, AuditRecordSchema, type AuditRecord } from "@nearhub/proto/audit";
import {
  GENESIS_HASH,
  checkpointPayload,
  keyIdOf,
  recordHash,
  signRecord,
  verifyTrail,
  type TrailEntry,
} from "./chain.js";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const keyId = keyIdOf(publicKey);
const keys = new Map([[keyId, publicKey]]);

function chain(n: number): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = GENESIS_HASH;
  for (let i = 1; i <= n; i++) {
    const event = create(AuditEventSchema, {
      id: `e${i}`,
      actor: "user:alice",
      action: "mirror.add",
      resource: `github.com/acme/r${i}`,
      details: { b: "2", a: "1" },
    });
    const at = 1_700_000_000_000 + i;
    const hash = recordHash(prev, BigInt(i), at, event);
    out.push(
      create(AuditRecordSchema, {
        sequence: BigInt(i),
        event,
        recordedAt: timestampFromMs(at),
        prevHash: prev,
        hash,
        keyId,
        signature: signRecord({ hash, keyId }, privateKey),
      }),
    );
    prev = hash;
  }
  return out;
}

function checkpoint(records: AuditRecord[], signer = privateKey) {
  const last = records.at(-1)!;
  const unsigned = {
    firstSequence: records[0]!.sequence,
    lastSequence: last.sequence,
    lastHash: last.hash,
    time: timestampFromMs(1_700_000_100_000),
    keyId,
  };
  return create(AuditCheckpointSchema, {
    ...unsigned,
    signature: sign(null, checkpointPayload(unsigned), signer).toString("base64"),
  });
}

async function* entries(records: AuditRecord[], cps: ReturnType<typeof checkpoint>[] = []): AsyncIterable<TrailEntry> {
  for (const record of records) yield { kind: "record", record };
  for (const cp of cps) yield { kind: "checkpoint", checkpoint: cp };
}

describe("audit hash chain", () => {
  test("an intact chain with a signed checkpoint verifies", async () => {
    const records = chain(5);
    const verdict = await verifyTrail(entries(records, [checkpoint(records)]), keys);
    assert.deepEqual(verdict, {
      ok: true,
      recordsChecked: 5,
      checkpointsChecked: 1,
      firstBrokenSequence: 0n,
      problem: "",
      lastSequence: 5n,
    });
  });

  test("the hash does not depend on the order of detail keys", () => {
    const a = create(AuditEventSchema, { id: "x", details: { a: "1", b: "2" } });
    const b = create(AuditEventSchema, { id: "x", details: { b: "2", a: "1" } });
    assert.equal(recordHash(GENESIS_HASH, 1n, 5, a), recordHash(GENESIS_HASH, 1n, 5, b));
  });

  test("an altered record is named", async () => {
    const records = chain(6);
    records[3]!.event!.actor = "user:mallory";
    const verdict = await verifyTrail(entries(records), keys);
    assert.equal(verdict.ok, false);
    assert.equal(verdict.firstBrokenSequence, 4n);
    assert.match(verdict.problem, /record 4 was altered/);
  });

  test("a removed record is named", async () => {
    const records = chain(6);
    records.splice(2, 1);
    const verdict = await verifyTrail(entries(records), keys);
    assert.equal(verdict.firstBrokenSequence, 3n);
    assert.match(verdict.problem, /record 3 is missing/);
  });

  test("a re-hashed forgery still breaks the link to the next record", async () => {
    const records = chain(4);
    const forged = records[1]!;
    forged.event!.resource = "github.com/acme/forged";
    forged.hash = recordHash(forged.prevHash, forged.sequence, 1_700_000_000_002, forged.event!);
    // Even re-signed, as only someone holding the service key could.
    forged.signature = signRecord(forged, privateKey);
    const verdict = await verifyTrail(entries(records), keys);
    assert.equal(verdict.firstBrokenSequence, 3n);
    assert.match(verdict.problem, /does not link/);
  });

  test("a checkpoint by an unknown key or with a bad signature is refused", async () => {
    const records = chain(3);
    const other = generateKeyPairSync("ed25519").privateKey;
    const forged = checkpoint(records, other);
    let verdict = await verifyTrail(entries(records, [forged]), keys);
    assert.equal(verdict.ok, false);
    assert.match(verdict.problem, /invalid signature/);
    const unknown = create(AuditCheckpointSchema, { ...checkpoint(records), keyId: "0000000000000000" });
    verdict = await verifyTrail(entries(records, [unknown]), keys);
    assert.match(verdict.problem, /unknown key 0000000000000000/);
  });

  test("a checkpoint that signed a different end of chain exposes a rewritten history", async () => {
    const original = chain(3);
    const cp = checkpoint(original);
    const rewritten = chain(3);
    rewritten[2]!.event!.action = "mirror.remove";
    rewritten[2]!.hash = recordHash(rewritten[2]!.prevHash, 3n, 1_700_000_000_003, rewritten[2]!.event!);
    rewritten[2]!.signature = signRecord(rewritten[2]!, privateKey);
    const verdict = await verifyTrail(entries(rewritten, [cp]), keys);
    assert.equal(verdict.ok, false);
    assert.match(verdict.problem, /differs from what checkpoint signed/);
  });

  test("a well-chained record not signed by the audit service is named", async () => {
    const records = chain(4);
    // Appended by someone who can publish on the trail subject: correct link and hash, no key.
    const event = create(AuditEventSchema, { id: "forged", actor: "user:mallory", action: "repo.delete" });
    const hash = recordHash(records[3]!.hash, 5n, 1_700_000_000_005, event);
    const forged = create(AuditRecordSchema, {
      sequence: 5n,
      event,
      recordedAt: timestampFromMs(1_700_000_000_005),
      prevHash: records[3]!.hash,
      hash,
    });
    let verdict = await verifyTrail(entries([...records, forged]), keys);
    assert.equal(verdict.ok, false);
    assert.equal(verdict.firstBrokenSequence, 5n);
    assert.match(verdict.problem, /record 5 is not signed: it was not written by the audit service/);

    const other = generateKeyPairSync("ed25519");
    const otherId = keyIdOf(other.publicKey);
    forged.keyId = otherId;
    forged.signature = signRecord({ hash, keyId: otherId }, other.privateKey);
    verdict = await verifyTrail(entries([...records, forged]), keys);
    assert.match(verdict.problem, new RegExp(`record 5 is signed by unknown key ${otherId}`));

    // A trusted key id with someone else's signature, and a signature copied from another record.
    forged.keyId = keyId;
    verdict = await verifyTrail(entries([...records, forged]), keys);
    assert.match(verdict.problem, /record 5 has an invalid signature/);
    forged.signature = records[3]!.signature;
    verdict = await verifyTrail(entries([...records, forged]), keys);
    assert.match(verdict.problem, /record 5 has an invalid signature/);
    for (const garbage of ["", "not base64 at all!", "A".repeat(100_000)]) {
      forged.signature = garbage;
      verdict = await verifyTrail(entries([...records, forged]), keys);
      assert.equal(verdict.firstBrokenSequence, 5n, garbage.slice(0, 20));
      assert.match(verdict.problem, /record 5 has an invalid signature/);
    }
  });

  test("verification can start in the middle of the trail", async () => {
    const records = chain(10);
    const verdict = await verifyTrail(entries(records), keys, 6n);
    assert.equal(verdict.ok, true);
    assert.equal(verdict.recordsChecked, 5);
  });
});
