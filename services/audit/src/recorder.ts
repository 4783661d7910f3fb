import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, type Logger, type MessageHandler } from "@nearhub/platform";
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

const AUDIT_EVENT = { domain: "audit", what: "event", type: "nearhub.audit", schema: auditSchema } as const;

/**
 * Turns audit events from the inbox stream into chained trail records, once each: an event
 * already in the trail (by id) is acknowledged and skipped. Appends, checkpoints and catch-up
 * run one at a time, so the chain in this process never races itself.
 */
export class Recorder {
  private queue: Promise<unknown> = Promise.resolve();
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
    for await (const entry of trail.entries(index.lastTrailSeq() + 1)) {
      if (entry.kind === "record") index.insert(entry.record, entry.streamSeq);
    }
  }

  /** The consumer handler of the inbox stream. */
  handler(): MessageHandler {
    return (message) =>
      this.exclusive(async () => {
        const event = message.decode(AUDIT_EVENT);
        if (!event.id) event.id = message.id ?? `inbox-${message.streamSequence}`;
        const { index, trail } = this.options;
        if (index.has(event.id)) return;
        let appended;
        try {
          appended = await trail.append(event);
        } catch (error) {
          if (error instanceof NearhubError && error.code === Code.Aborted) {
            // Already in the trail (appended before a crash): bring the index up to date.
            await this.catchUp();
            return;
          }
          throw error;
        }
        index.insert(appended.record, appended.streamSeq);
        this.written.inc();
        if (event.time) this.lag.observe(Math.max(0, Date.now() - timestampMs(event.time)) / 1000);
        if (trail.uncheckpointed >= BigInt(this.options.checkpointRecords)) await trail.checkpoint();
      });
  }
}
