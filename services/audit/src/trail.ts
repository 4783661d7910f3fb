import { sign, verify } from "node:crypto";
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type Bus, type Logger, type Names, type StreamDecl } from "@nearhub/platform";
import { AuditCheckpointSchema, AuditRecordSchema, type AuditEvent, type AuditRecord } from "@nearhub/proto/audit";
import { nanos } from "@nats-io/nats-core";
import { DeliverPolicy, StorageType, type PubAck } from "@nats-io/jetstream";
import {
  GENESIS_HASH,
  checkpointPayload,
  recordHash,
  recordSignaturePayload,
  signRecord,
  type TrailEntry,
} from "./chain.js";
import type { SigningKey } from "./signing-key.js";

/** The trail stream: records and checkpoints, written only by the audit service. */
export function trailStream(names: Names, retentionDays: number): StreamDecl {
  return {
    name: names.stream("AUDIT_TRAIL"),
    // Exactly the two subjects the audit service writes: nothing else can be stored beside them.
    subjects: [names.subject("audittrail.record"), names.subject("audittrail.checkpoint")],
    storage: StorageType.File,
    max_age: nanos(retentionDays * 24 * 3600 * 1000),
    deny_delete: true,
    deny_purge: true,
    duplicate_window: nanos(10 * 60 * 1000),
  };
}

/** An event to append, with the time the audit service received it (ms since the epoch). */
export interface Appendable {
  event: AuditEvent;
  recordedAtMs: number;
}

/** A record JetStream stored, and where. */
export interface Appended {
  record: AuditRecord;
  streamSeq: number;
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

  /** The stream sequence of the last record (0 when none). */
  get lastRecordStreamSeq(): number {
    return this.state.lastRecordStreamSeq;
  }

  /** The record stored at stream sequence `streamSeq`, if that message is one. */
  async recordAt(streamSeq: number): Promise<AuditRecord | undefined> {
    if (!Number.isSafeInteger(streamSeq) || streamSeq < 1) return undefined;
    const m = await this.bus.jsm.streams.getMessage(this.stream, { seq: streamSeq }).catch(notFound);
    if (!m || m.subject !== this.recordSubject) return undefined;
    return fromJsonString(AuditRecordSchema, new TextDecoder().decode(m.data));
  }

  /**
   * True when this service wrote `record`: its hash matches its content and carries this
   * service's signature. Anything else on the trail subject is a forgery for `verify` to name,
   * and stays out of the query index.
   */
  wrote(record: AuditRecord): boolean {
    if (record.keyId !== this.key.keyId || !record.event || !record.recordedAt) return false;
    if (recordHash(record.prevHash, record.sequence, timestampMs(record.recordedAt), record.event) !== record.hash) {
      return false;
    }
    const signature = Buffer.from(record.signature, "base64");
    return signature.length === 64 && verify(null, recordSignaturePayload(record), this.key.publicKey, signature);
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

  /**
   * Appends events as the next records, in order, and says which JetStream stored: always a
   * prefix of `items`, with the reason it stopped short. The first record goes alone and
   * expects the last record the chain knows (`Nats-Expected-Last-Subject-Sequence`); the rest
   * go pipelined, each expecting its predecessor at the stream sequence right before it and as
   * the last message id (`Nats-Expected-Last-Msg-Id`). So a record is stored only straight
   * after the record it links to, and two writers can never fork the chain: whoever loses
   * reloads the end of the chain and leaves the rest to be retried. A record's time is when
   * its event reached the audit inbox, so every attempt at one event builds the same record.
   */
  async appendMany(items: readonly Appendable[]): Promise<{ stored: Appended[]; error?: NearhubError }> {
    const stored: Appended[] = [];
    if (items.length === 0) return { stored };
    const records: AuditRecord[] = [];
    let prevHash = this.state.lastHash;
    let sequence = this.state.lastSequence;
    for (const { event, recordedAtMs } of items) {
      sequence++;
      const hash = recordHash(prevHash, sequence, recordedAtMs, event);
      const keyId = this.key.keyId;
      records.push(
        create(AuditRecordSchema, {
          sequence,
          event,
          recordedAt: timestampFromMs(recordedAtMs),
          prevHash,
          hash,
          keyId,
          signature: signRecord({ hash, keyId }, this.key.privateKey),
        }),
      );
      prevHash = hash;
    }
    const msgID = (k: number) => `record:${records[k]!.event!.id}`;
    const send = (k: number, expect: { lastSubjectSequence: number; lastMsgID?: string }) =>
      this.bus.js.publish(this.recordSubject, toJsonString(AuditRecordSchema, records[k]!), {
        msgID: msgID(k),
        expect,
        timeout: 5000,
      });
    const accept = (k: number, ack: PubAck) => {
      if (ack.duplicate) {
        // Stored before a crash or by another writer: the stream's copy is the truth.
        throw new NearhubError(Code.Aborted, `audit event ${records[k]!.event!.id} was already appended`);
      }
      const record = records[k]!;
      this.state = {
        ...this.state,
        lastSequence: record.sequence,
        lastHash: record.hash,
        lastRecordStreamSeq: ack.seq,
      };
      stored.push({ record, streamSeq: ack.seq });
    };
    try {
      const first = await send(0, { lastSubjectSequence: this.state.lastRecordStreamSeq });
      accept(0, first);
      const rest = await Promise.allSettled(
        records.slice(1).map((_, i) => send(i + 1, { lastSubjectSequence: first.seq + i, lastMsgID: msgID(i) })),
      );
      for (const [i, outcome] of rest.entries()) {
        if (outcome.status === "rejected") throw outcome.reason;
        accept(i + 1, outcome.value);
      }
      return { stored };
    } catch (error) {
      // Most often: another writer appended first. Reload the end of the chain; retry later.
      await this.load().catch((e: unknown) => this.logger.warn("could not reload the audit chain", { error: e }));
      return {
        stored,
        error:
          error instanceof NearhubError
            ? error
            : new NearhubError(Code.Unavailable, `could not append to the audit trail: ${(error as Error).message}`, {
                cause: error,
              }),
      };
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

  /**
   * Every record and checkpoint from stream sequence `from` up to `to` (default: the end of the
   * stream when the read starts), in order. One ordered consumer streams the range: a request
   * per message would take minutes on a long trail.
   */
  async *entries(from = 1, to?: number): AsyncIterable<TrailEntry & { streamSeq: number }> {
    const info = await this.bus.jsm.streams.info(this.stream);
    let next = Math.max(from, info.state.first_seq);
    const last = Math.min(to ?? info.state.last_seq, info.state.last_seq);
    if (info.state.messages === 0 || next > last) return;
    const consumer = await this.bus.js.consumers.get(this.stream, {
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: next,
    });
    const decoder = new TextDecoder();
    while (next <= last) {
      const batch = await consumer.fetch({ max_messages: Math.min(1000, last - next + 1), expires: 5000 });
      let received = 0;
      for await (const m of batch) {
        received++;
        if (m.seq > last) continue;
        next = m.seq + 1;
        const text = decoder.decode(m.data);
        if (m.subject === this.recordSubject) {
          yield { kind: "record", record: fromJsonString(AuditRecordSchema, text), streamSeq: m.seq };
        } else if (m.subject === this.checkpointSubject) {
          yield { kind: "checkpoint", checkpoint: fromJsonString(AuditCheckpointSchema, text), streamSeq: m.seq };
        }
      }
      // Nothing more arrived: the rest of the range aged out of the stream while we read.
      if (received === 0) break;
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
