import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AuditCheckpointSchema, AuditEventSchema, AuditRecordSchema, type AuditRecord } from "@nearhub/proto/audit";
import { GENESIS_HASH, checkpointPayload, keyIdOf, recordHash, verifyTrail, type TrailEntry } from "./chain.js";

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
      create(AuditRecordSchema, { sequence: BigInt(i), event, recordedAt: timestampFromMs(at), prevHash: prev, hash }),
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
    const verdict = await verifyTrail(entries(rewritten, [cp]), keys);
    assert.equal(verdict.ok, false);
    assert.match(verdict.problem, /differs from what checkpoint signed/);
  });

  test("verification can start in the middle of the trail", async () => {
    const records = chain(10);
    const verdict = await verifyTrail(entries(records), keys, 6n);
    assert.equal(verdict.ok, true);
    assert.equal(verdict.recordsChecked, 5);
  });
});
