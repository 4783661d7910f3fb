import { sign } from "node:crypto";
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type Bus, type Logger, type Names, type StreamDecl } from "@nearhub/platform";
import { AuditCheckpointSchema, AuditRecordSchema, type AuditEvent, type AuditRecord } from "@nearhub/proto/audit";
import { nanos } from "@nats-io/nats-core";
import { StorageType } from "@nats-io/jetstream";
import { GENESIS_HASH, checkpointPayload, recordHash, type TrailEntry } from "./chain.js";
import type { SigningKey } from "./signing-key.js";

/** The trail stream: records and checkpoints, written only by the audit service. */
export function trailStream(names: Names, retentionDays: number): StreamDecl {
  return {
    name: names.stream("AUDIT_TRAIL"),
    subjects: [names.subject("audittrail.>")],
    storage: StorageType.File,
    max_age: nanos(retentionDays * 24 * 3600 * 1000),
    deny_delete: true,
    deny_purge: true,
    duplicate_window: nanos(10 * 60 * 1000),
  };
}

/** Where the chain ends, as the trail stream says. */
interface ChainState {
  lastSequence: bigint;
  lastHash: string;
  /** Stream sequence of the last record: the expectation of the next append. */
  lastRecordStreamSeq: number;
  /** First record not yet covered by a checkpoint. */
  firstUncheckpointed: bigint;
}

/**
 * The hash-chained audit trail on a deny-delete, deny-purge JetStream stream. Appends carry
 * `Nats-Expected-Last-Subject-Sequence`, so two replicas can never fork the chain: the loser's
 * append fails, it reloads the end of the chain and retries. A signed checkpoint follows every
 * N records or minutes (the CloudTrail digest idea).
 */
export class AuditTrail {
  readonly stream: string;
  readonly recordSubject: string;
  readonly checkpointSubject: string;
  private state: ChainState = {
    lastSequence: 0n,
    lastHash: GENESIS_HASH,
    lastRecordStreamSeq: 0,
    firstUncheckpointed: 1n,
  };

  constructor(
    private readonly bus: Bus,
    names: Names,
    private readonly key: SigningKey,
    private readonly logger: Logger,
  ) {
    this.stream = names.stream("AUDIT_TRAIL");
    this.recordSubject = names.subject("audittrail.record");
    this.checkpointSubject = names.subject("audittrail.checkpoint");
  }

  /** The last record's sequence. */
  get lastSequence(): bigint {
    return this.state.lastSequence;
  }

  /** Records appended since the last checkpoint. */
  get uncheckpointed(): bigint {
    return this.state.lastSequence - this.state.firstUncheckpointed + 1n;
  }

  /** Reads where the chain ends (and where the last checkpoint stopped) from the stream. */
  async load(): Promise<void> {
    const last = await this.bus.jsm.streams
      .getMessage(this.stream, { last_by_subj: this.recordSubject })
      .catch(notFound);
    const lastCheckpoint = await this.bus.jsm.streams
      .getMessage(this.stream, { last_by_subj: this.checkpointSubject })
      .catch(notFound);
    if (!last) {
      this.state = { lastSequence: 0n, lastHash: GENESIS_HASH, lastRecordStreamSeq: 0, firstUncheckpointed: 1n };
      return;
    }
    const record = fromJsonString(AuditRecordSchema, new TextDecoder().decode(last.data));
    const checkpointed = lastCheckpoint
      ? fromJsonString(AuditCheckpointSchema, new TextDecoder().decode(lastCheckpoint.data)).lastSequence
      : 0n;
    this.state = {
      lastSequence: record.sequence,
      lastHash: record.hash,
      lastRecordStreamSeq: last.seq,
      firstUncheckpointed: checkpointed + 1n,
    };
  }

  /** Appends one event as the next record; resolves once JetStream stored it. */
  async append(event: AuditEvent): Promise<{ record: AuditRecord; streamSeq: number }> {
    const sequence = this.state.lastSequence + 1n;
    const recordedAtMs = Date.now();
    const record = create(AuditRecordSchema, {
      sequence,
      event,
      recordedAt: timestampFromMs(recordedAtMs),
      prevHash: this.state.lastHash,
      hash: recordHash(this.state.lastHash, sequence, recordedAtMs, event),
    });
    try {
      const ack = await this.bus.js.publish(this.recordSubject, toJsonString(AuditRecordSchema, record), {
        msgID: `record:${event.id}`,
        expect: { lastSubjectSequence: this.state.lastRecordStreamSeq },
        timeout: 5000,
      });
      if (ack.duplicate) {
        // Stored before a crash or by another replica: the stream's copy is the truth.
        await this.load();
        throw new NearhubError(Code.Aborted, `audit event ${event.id} was already appended`);
      }
      this.state = { ...this.state, lastSequence: sequence, lastHash: record.hash, lastRecordStreamSeq: ack.seq };
      return { record, streamSeq: ack.seq };
    } catch (error) {
      if (error instanceof NearhubError) throw error;
      // Most often: another replica appended first. Reload the end of the chain and retry.
      await this.load().catch((e: unknown) => this.logger.warn("could not reload the audit chain", { error: e }));
      throw new NearhubError(Code.Unavailable, `could not append to the audit trail: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /** Signs and appends a checkpoint over the records since the last one (none when empty). */
  async checkpoint(): Promise<void> {
    if (this.uncheckpointed <= 0n) return;
    const unsigned = {
      firstSequence: this.state.firstUncheckpointed,
      lastSequence: this.state.lastSequence,
      lastHash: this.state.lastHash,
      time: timestampNow(),
      keyId: this.key.keyId,
    };
    const signature = sign(null, checkpointPayload(unsigned), this.key.privateKey).toString("base64");
    const checkpoint = create(AuditCheckpointSchema, { ...unsigned, signature });
    await this.bus.publish(
      this.checkpointSubject,
      new TextEncoder().encode(toJsonString(AuditCheckpointSchema, checkpoint)),
      {
        msgID: `checkpoint:${unsigned.lastSequence.toString()}`,
        type: "audit_checkpoint",
      },
    );
    this.state = { ...this.state, firstUncheckpointed: unsigned.lastSequence + 1n };
  }

  /** Every record and checkpoint from stream sequence `from` on, in order. */
  async *entries(from = 1): AsyncIterable<TrailEntry & { streamSeq: number }> {
    const info = await this.bus.jsm.streams.info(this.stream);
    const first = Math.max(from, info.state.first_seq);
    const decoder = new TextDecoder();
    for (let seq = first; seq <= info.state.last_seq; seq++) {
      const m = await this.bus.jsm.streams.getMessage(this.stream, { seq }).catch(notFound);
      if (!m) continue;
      const text = decoder.decode(m.data);
      if (m.subject === this.recordSubject) {
        yield { kind: "record", record: fromJsonString(AuditRecordSchema, text), streamSeq: seq };
      } else if (m.subject === this.checkpointSubject) {
        yield { kind: "checkpoint", checkpoint: fromJsonString(AuditCheckpointSchema, text), streamSeq: seq };
      }
    }
  }
}

function notFound(error: unknown): null {
  const e = error as { code?: number; api_error?: { code?: number; err_code?: number }; message?: string };
  if (
    e.api_error?.code === 404 ||
    e.api_error?.err_code === 10037 ||
    /no message found|not found/i.test(e.message ?? "")
  ) {
    return null;
  }
  throw error;
}
