import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type Logger, type MessageHandler } from "@nearhub/platform";
import type { AuditEvent, AuditRecord } from "@nearhub/proto/audit";
import { auditSchema } from "@nearhub/proto/events";
import { Counter, Histogram, type Registry } from "prom-client";
import type { RecordIndex } from "./record-index.js";
import type { AuditTrail } from "./trail.js";

/** Options of {@link Recorder}. */
export interface RecorderOptions {
  trail: AuditTrail;
  index: RecordIndex;
  logger: Logger;
  registry: Registry;
  /** Sign a checkpoint after this many records… */
  checkpointRecords: number;
  /** …or this long after the first unsigned one. */
  checkpointIntervalMs: number;
}

/** Records per batch: one index transaction, one pipelined burst of appends. */
export const RECORDER_BATCH = 256;

/** An event waiting for its batch, and its handler's settlement. */
interface Pending {
  event: AuditEvent;
  recordedAtMs: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

const AUDIT_EVENT = { domain: "audit", what: "event", type: "nearhub.audit", schema: auditSchema } as const;

/**
 * Turns audit events from the inbox stream into chained trail records, once each: an event
 * already in the trail (by id) is acknowledged and skipped. Batches of appends, checkpoints
 * and catch-up run one at a time, so the chain in this process never races itself.
 */
export class Recorder {
  private queue: Promise<unknown> = Promise.resolve();
  /** Events waiting for the next batch, in delivery order. */
  private pending: Pending[] = [];
  private flushQueued = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly written: Counter;
  private readonly lag: Histogram;
  /** Counts verification runs that found a broken trail. */
  readonly verifyFailures: Counter;

  constructor(private readonly options: RecorderOptions) {
    this.written = new Counter({
      name: "nearhub_audit_records_written_total",
      help: "Audit records appended to the trail",
      registers: [options.registry],
    });
    this.verifyFailures = new Counter({
      name: "nearhub_audit_verify_failures_total",
      help: "Trail verifications that found a broken record or checkpoint",
      registers: [options.registry],
    });
    this.lag = new Histogram({
      name: "nearhub_audit_record_lag_seconds",
      help: "Time from an audited action to its record in the trail",
      buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
      registers: [options.registry],
    });
  }

  /** Runs `fn` after everything queued before it. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Waits until nothing is being recorded and says where trail and index both end: every
   * record up to there is in the index.
   */
  settled(): Promise<{ lastSequence: bigint; lastStreamSeq: number }> {
    return this.exclusive(async () => ({
      lastSequence: this.options.trail.lastSequence,
      lastStreamSeq: this.options.trail.lastRecordStreamSeq,
    }));
  }

  /** Loads the end of the chain and indexes any records the index lacks (after a crash). */
  async start(): Promise<void> {
    await this.exclusive(async () => {
      await this.options.trail.load();
      await this.catchUp();
    });
    this.timer = setInterval(() => {
      this.exclusive(() => this.options.trail.checkpoint()).catch((error: unknown) =>
        this.options.logger.warn("periodic audit checkpoint failed", { error }),
      );
    }, this.options.checkpointIntervalMs);
    this.timer.unref();
  }

  /** Signs a last checkpoint over what is unsigned. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.exclusive(() => this.options.trail.checkpoint()).catch((error: unknown) =>
      this.options.logger.warn("final audit checkpoint failed", { error }),
    );
  }

  private async catchUp(): Promise<void> {
    const { index, trail } = this.options;
    let batch: Array<{ record: AuditRecord; streamSeq: number }> = [];
    for await (const entry of trail.entries(index.lastTrailSeq() + 1)) {
      // A forged record stays out of the index: queries must not present it as fact.
      if (entry.kind !== "record" || !trail.wrote(entry.record)) continue;
      batch.push({ record: entry.record, streamSeq: entry.streamSeq });
      if (batch.length >= 1000) {
        index.insertMany(batch);
        batch = [];
      }
    }
    index.insertMany(batch);
  }

  /**
   * The consumer handler of the inbox stream. Run it with several messages in flight: each
   * handler queues its event and resolves (so the bus acks the inbox message) once the batch
   * holding it is in the trail and the index; a batch is one alone-then-pipelined append and
   * one index transaction, so recording keeps up with the bus rather than one round trip and
   * commit per event. Batches end at checkpoint boundaries.
   */
  handler(): MessageHandler {
    return async (message) => {
      const event = message.decode(AUDIT_EVENT);
      if (!event.id) event.id = message.id ?? `inbox-${message.streamSequence}`;
      const recordedAtMs = message.storedAtMs ?? Date.now();
      await new Promise<void>((resolve, reject) => {
        this.pending.push({ event, recordedAtMs, resolve, reject });
        this.scheduleFlush();
      });
    };
  }

  private scheduleFlush(): void {
    if (this.flushQueued || this.pending.length === 0) return;
    this.flushQueued = true;
    void this.exclusive(async () => {
      this.flushQueued = false;
      const room = Number(BigInt(this.options.checkpointRecords) - this.options.trail.uncheckpointed);
      const batch = this.pending.splice(0, Math.max(1, Math.min(RECORDER_BATCH, room)));
      this.scheduleFlush();
      await this.record(batch);
    });
  }

  /** Appends and indexes a batch once each; settles every item's handler. */
  private async record(batch: Pending[]): Promise<void> {
    const { index, trail } = this.options;
    const fresh: Pending[] = [];
    const repeats: Pending[] = [];
    const ids = new Set<string>();
    for (const item of batch) {
      if (index.has(item.event.id)) item.resolve();
      else if (ids.has(item.event.id)) repeats.push(item);
      else {
        ids.add(item.event.id);
        fresh.push(item);
      }
    }
    let failure: NearhubError | undefined;
    try {
      const { stored, error } = await trail.appendMany(fresh);
      index.insertMany(stored);
      const now = Date.now();
      for (const { record } of stored) {
        this.written.inc();
        if (record.event?.time) this.lag.observe(Math.max(0, now - timestampMs(record.event.time)) / 1000);
      }
      if (error) {
        failure = error;
        // Whatever reached the trail (before a crash, by another writer, or despite a lost ack)
        // goes into the index now, so `has` below knows it.
        await this.catchUp();
      }
      if (trail.uncheckpointed >= BigInt(this.options.checkpointRecords)) await trail.checkpoint();
    } catch (error) {
      failure = NearhubError.from(error, Code.Unavailable);
    }
    for (const item of [...fresh, ...repeats]) {
      if (!failure || index.has(item.event.id)) item.resolve();
      else item.reject(failure.code === Code.Aborted ? new NearhubError(Code.Unavailable, failure.message) : failure);
    }
  }
}
