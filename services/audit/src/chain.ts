import { createHash, createPublicKey, sign, verify as verifySignature, type KeyObject } from "node:crypto";
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

/** The bytes a record's signature covers: its hash (which covers everything else) and the key id. */
export function recordSignaturePayload(record: Pick<AuditRecord, "hash" | "keyId">): Buffer {
  return Buffer.from(`nearhub-audit-record\n${record.hash}\n${record.keyId}`);
}

/** The base64 Ed25519 signature of a record by the audit service key. */
export function signRecord(record: Pick<AuditRecord, "hash" | "keyId">, privateKey: KeyObject): string {
  return sign(null, recordSignaturePayload(record), privateKey).toString("base64");
}

/** The first 16 hex characters of sha256(SPKI DER) of a public key. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash("sha256")
    .update(publicKey.export({ type: "spki", format: "der" }))
    .digest("hex")
    .slice(0, 16);
}

/** An entry of the trail, in stream order: a record or a checkpoint. */
export type TrailEntry =
  | { kind: "record"; record: AuditRecord; streamSeq?: number }
  | { kind: "checkpoint"; checkpoint: AuditCheckpoint; streamSeq?: number };

/** A break found by a {@link RecordWitness}. */
export interface WitnessBreak {
  sequence: bigint;
  problem: string;
}

/**
 * A copy of the trail checked alongside it (the query index): shown every record that verified,
 * in order, then asked for anything it holds that the trail does not.
 */
export interface RecordWitness {
  check(record: AuditRecord, streamSeq: number | undefined): Promise<WitnessBreak | undefined>;
  finish(): Promise<WitnessBreak | undefined>;
}

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
 * Recomputes every record's hash and link, checks sequence continuity, verifies each record's
 * and each checkpoint's Ed25519 signature by a trusted key and that a checkpoint matches the
 * record it names, and has `witness` (the query index) compare its copy of every record. Stops
 * at the first broken record and names it.
 */
export async function verifyTrail(
  entries: AsyncIterable<TrailEntry>,
  trustedKeys: Map<string, KeyObject>,
  sinceSequence = 0n,
  witness?: RecordWitness,
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
      // The chain is public, so anyone able to publish on the trail's subject could append a
      // well-linked record: only the audit service's signature says who wrote it.
      const signer = trustedKeys.get(r.keyId);
      if (!signer) {
        return broken(
          r.sequence,
          r.signature
            ? `record ${r.sequence} is signed by unknown key ${r.keyId.slice(0, 64)}: it was not written by this audit service`
            : `record ${r.sequence} is not signed: it was not written by the audit service`,
        );
      }
      if (!validSignature(recordSignaturePayload(r), signer, r.signature)) {
        return broken(
          r.sequence,
          `record ${r.sequence} has an invalid signature: it was not written by the audit service`,
        );
      }
      const disagreement = await witness?.check(r, entry.streamSeq);
      if (disagreement) return broken(disagreement.sequence, disagreement.problem);
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
      if (!validSignature(checkpointPayload(cp), key, cp.signature))
        return broken(cp.lastSequence, `checkpoint at ${cp.lastSequence} has an invalid signature`);
      const seen = hashes.get(cp.lastSequence);
      if (seen !== undefined && seen !== cp.lastHash) {
        return broken(cp.lastSequence, `record ${cp.lastSequence} differs from what checkpoint signed`);
      }
      checkpoints++;
    }
  }
  const leftover = await witness?.finish();
  if (leftover) return broken(leftover.sequence, leftover.problem);
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

function validSignature(payload: Buffer, key: KeyObject, signature: string): boolean {
  const bytes = Buffer.from(signature, "base64");
  // Ed25519 signatures are 64 bytes; anything else is not worth handing to OpenSSL.
  return bytes.length === 64 && verifySignature(null, payload, key, bytes);
}
