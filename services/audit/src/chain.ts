import { createHash, createPublicKey, verify as verifySignature, type KeyObject } from "node:crypto";
import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { AuditEventSchema, type AuditCheckpoint, type AuditEvent, type AuditRecord } from "@nearhub/proto/audit";

/** The hash before the first record. */
export const GENESIS_HASH = "0".repeat(64);

/** The event's canonical JSON: proto3 JSON with map keys sorted, so equal events hash equal. */
export function canonicalEvent(event: AuditEvent): string {
  const details = Object.fromEntries(Object.entries(event.details).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return toJsonString(AuditEventSchema, create(AuditEventSchema, { ...event, details }));
}

/** sha256(prev_hash ‖ sequence ‖ recorded_at ms ‖ canonical event), lower-case hex. */
export function recordHash(prevHash: string, sequence: bigint, recordedAtMs: number, event: AuditEvent): string {
  return createHash("sha256")
    .update(`${prevHash}\n${sequence.toString()}\n${recordedAtMs}\n${canonicalEvent(event)}`)
    .digest("hex");
}

/** The bytes a checkpoint's signature covers. */
export function checkpointPayload(
  cp: Pick<AuditCheckpoint, "firstSequence" | "lastSequence" | "lastHash" | "time" | "keyId">,
): Buffer {
  const timeMs = cp.time ? timestampMs(cp.time) : 0;
  return Buffer.from(
    `nearhub-audit-checkpoint\n${cp.firstSequence.toString()}\n${cp.lastSequence.toString()}\n${cp.lastHash}\n${timeMs}\n${cp.keyId}`,
  );
}

/** The first 16 hex characters of sha256(SPKI DER) of a public key. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash("sha256")
    .update(publicKey.export({ type: "spki", format: "der" }))
    .digest("hex")
    .slice(0, 16);
}

/** An entry of the trail, in stream order: a record or a checkpoint. */
export type TrailEntry = { kind: "record"; record: AuditRecord } | { kind: "checkpoint"; checkpoint: AuditCheckpoint };

/** The verdict of {@link verifyTrail}. */
export interface Verdict {
  ok: boolean;
  recordsChecked: number;
  checkpointsChecked: number;
  /** 0n when intact. */
  firstBrokenSequence: bigint;
  problem: string;
  lastSequence: bigint;
}

/**
 * Recomputes every record's hash and link, checks sequence continuity, and verifies each
 * checkpoint's Ed25519 signature and that it matches the record it names. Stops at the first
 * broken record and names it.
 */
export async function verifyTrail(
  entries: AsyncIterable<TrailEntry>,
  trustedKeys: Map<string, KeyObject>,
  sinceSequence = 0n,
): Promise<Verdict> {
  const hashes = new Map<bigint, string>();
  let prevHash: string | undefined;
  let expected: bigint | undefined;
  let records = 0;
  let checkpoints = 0;
  let lastSequence = 0n;
  const broken = (sequence: bigint, problem: string): Verdict => ({
    ok: false,
    recordsChecked: records,
    checkpointsChecked: checkpoints,
    firstBrokenSequence: sequence === 0n ? 1n : sequence,
    problem,
    lastSequence,
  });
  for await (const entry of entries) {
    if (entry.kind === "record") {
      const r = entry.record;
      if (r.sequence < sinceSequence) continue;
      if (!r.event || !r.recordedAt) return broken(r.sequence, `record ${r.sequence} has no event or time`);
      if (expected === undefined) {
        expected = r.sequence;
        prevHash = sinceSequence > 1n || r.sequence > 1n ? r.prevHash : GENESIS_HASH;
        if (r.sequence === 1n && r.prevHash !== GENESIS_HASH) {
          return broken(r.sequence, "the first record does not start from the genesis hash");
        }
      }
      if (r.sequence !== expected) {
        return broken(expected, `record ${expected} is missing (found ${r.sequence} next)`);
      }
      if (r.prevHash !== prevHash) {
        return broken(r.sequence, `record ${r.sequence} does not link to record ${r.sequence - 1n}`);
      }
      const computed = recordHash(r.prevHash, r.sequence, timestampMs(r.recordedAt), r.event);
      if (computed !== r.hash)
        return broken(r.sequence, `record ${r.sequence} was altered: its hash does not match its content`);
      hashes.set(r.sequence, r.hash);
      prevHash = r.hash;
      expected = r.sequence + 1n;
      lastSequence = r.sequence;
      records++;
    } else {
      const cp = entry.checkpoint;
      if (cp.lastSequence < sinceSequence) continue;
      const key = trustedKeys.get(cp.keyId);
      if (!key) return broken(cp.lastSequence, `checkpoint at ${cp.lastSequence} is signed by unknown key ${cp.keyId}`);
      const valid = verifySignature(null, checkpointPayload(cp), key, Buffer.from(cp.signature, "base64"));
      if (!valid) return broken(cp.lastSequence, `checkpoint at ${cp.lastSequence} has an invalid signature`);
      const seen = hashes.get(cp.lastSequence);
      if (seen !== undefined && seen !== cp.lastHash) {
        return broken(cp.lastSequence, `record ${cp.lastSequence} differs from what checkpoint signed`);
      }
      checkpoints++;
    }
  }
  return {
    ok: true,
    recordsChecked: records,
    checkpointsChecked: checkpoints,
    firstBrokenSequence: 0n,
    problem: "",
    lastSequence,
  };
}

/** A public key from base64 SPKI DER. */
export function publicKeyFromBase64(spki: string): KeyObject {
  return createPublicKey({ key: Buffer.from(spki, "base64"), format: "der", type: "spki" });
}
