import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate, timestampMs, timestampNow, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Consumer, JsMsg } from "@nats-io/jetstream";
import { Code, NearhubError, type Bus, type Logger } from "@nearhub/platform";
import { mirrorFailed, mirrorPaused, mirrorSynced } from "@nearhub/proto/events";
import { MirrorState, SyncJobSchema, type Mirror, type MirrorStatus, type SyncJob } from "@nearhub/proto/sync";
import { GitError } from "./git-runner.js";
import type { GitFetcher, SyncOutcome } from "./git-fetcher.js";
import type { MirrorStore } from "./mirror-store.js";
import type { StatusStore } from "./status-store.js";
import type { SyncMetrics } from "./sync-metrics.js";

/** Tunables of the engine. */
export interface EngineOptions {
  /** This replica's id, written as the lease owner. */
  replica: string;
  /** Parallel syncs in this replica. */
  concurrency: number;
  /** How long a sync lease lasts without renewal (renewed every third of it while git runs). */
  leaseMs: number;
  /** First retry delay after a failure; doubles per failure up to `maxBackoffMs`. */
  backoffMs: number;
  maxBackoffMs: number;
  /** Maintenance (repack with bitmaps, commit-graph, archive expiry) at most this often. */
  maintenanceIntervalMs: number;
  archiveRetentionS: number;
  /** Wait this long before syncing an upstream that answered 429. */
  rateLimitBackoffMs: number;
}

const ms = (t: Timestamp | undefined) => (t ? timestampMs(t) : 0);

/** The subject a mirror's jobs go to (any replica takes any job; the name is in the body). */
export const jobSubject = (bus: Bus) => bus.names.subject("jobs.sync.git");

/** Puts a sync job on the work queue; `msgID` de-duplicates publishes of the same job. */
export async function publishJob(bus: Bus, name: string, reason: string, msgID: string): Promise<void> {
  const job = create(SyncJobSchema, { name, reason, requestedAt: timestampNow() });
  await bus.publish(jobSubject(bus), new TextEncoder().encode(toJsonString(SyncJobSchema, job)), {
    msgID,
    type: "sync_job",
  });
}

/**
 * Takes jobs off `SYNC_JOBS` and runs them: one lease per mirror in the status bucket (so two
 * replicas never sync one mirror at once), the git fetcher, then status, events and metrics.
 * Failures back off exponentially; an upstream that refuses credentials or does not know the
 * repository pauses the mirror with its answer as the reason.
 */
export class SyncEngine {
  private readonly abort = new AbortController();
  private workers: Promise<void>[] = [];
  private stopping = false;
  private readonly rateLimitedUntil = new Map<string, number>();

  constructor(
    private readonly deps: {
      bus: Bus;
      mirrors: MirrorStore;
      status: StatusStore;
      fetcher: GitFetcher;
      metrics: SyncMetrics;
      logger: Logger;
      options: EngineOptions;
    },
  ) {}

  /** Starts `concurrency` workers pulling from the durable consumer. */
  async start(stream: string, durable: string): Promise<void> {
    const consumer = await this.deps.bus.js.consumers.get(stream, durable);
    for (let i = 0; i < this.deps.options.concurrency; i++) this.workers.push(this.work(consumer));
  }

  /** Stops pulling; running git processes are killed and their jobs handed back (nak). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.abort.abort(new Error("shutting down"));
    await Promise.all(this.workers);
  }

  private async work(consumer: Consumer): Promise<void> {
    const log = this.deps.logger.child({ component: "sync-worker" });
    while (!this.stopping) {
      let m: JsMsg | null;
      try {
        m = await consumer.next({ expires: 2000 });
      } catch (error) {
        if (this.stopping) return;
        log.warn("cannot pull a sync job; retrying", { error });
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (!m) continue;
      if (this.stopping) {
        m.nak();
        return;
      }
      const heartbeat = setInterval(() => m.working(), 10_000);
      try {
        let job: SyncJob;
        try {
          job = fromJsonString(SyncJobSchema, new TextDecoder().decode(m.data), { ignoreUnknownFields: true });
        } catch (error) {
          log.error("dropping a malformed sync job", { error, seq: m.seq });
          m.term("malformed job");
          continue;
        }
        await this.run(job);
        m.ack();
      } catch (error) {
        // Infrastructure trouble (KV, NATS) or shutdown: hand the job back.
        if (!this.stopping) log.warn("sync job failed; it will be retried", { error, seq: m.seq });
        m.nak(this.stopping ? 0 : 5000);
      } finally {
        clearInterval(heartbeat);
      }
    }
  }

  /** Runs one job to its end (exported for tests through the engine). */
  async run(job: SyncJob): Promise<void> {
    const { mirrors, status, fetcher, metrics, options, bus } = this.deps;
    const log = this.deps.logger.child({ component: "sync", mirror: job.name, reason: job.reason });
    const def = (await mirrors.get(job.name))?.mirror;
    if (!def) {
      metrics.runs.inc({ outcome: "skipped", reason: job.reason });
      return;
    }
    const now = Date.now();
    const requestedAt = ms(job.requestedAt);
    let skipped = "";
    const claimed = await status.update(job.name, (s) => {
      if (s.state === MirrorState.PAUSED) {
        skipped = "paused";
        return false;
      }
      if (ms(s.leaseUntil) > now && s.leaseOwner !== "") {
        // Another run holds the mirror: an explicit request reruns it after; a scheduled one is done.
        skipped = "busy";
        if (job.reason === "scheduled" || s.rerunRequested) return false;
        s.rerunRequested = true;
        s.rerunReason = job.reason;
        return true;
      }
      if (job.reason === "scheduled" && ms(s.lastRunStartedAt) >= requestedAt) {
        skipped = "already-run";
        return false;
      }
      skipped = "";
      s.leaseOwner = options.replica;
      s.leaseUntil = timestampFromDate(new Date(now + options.leaseMs));
      s.lastRunStartedAt = timestampFromDate(new Date(now));
      s.lastAttemptAt = s.lastRunStartedAt;
      s.rerunRequested = false;
      s.rerunReason = "";
      if (s.state !== MirrorState.IN_SYNC) s.state = MirrorState.SYNCING;
      return true;
    });
    if (skipped || !claimed) {
      metrics.runs.inc({ outcome: "skipped", reason: job.reason });
      log.debug("sync skipped", { why: skipped });
      return;
    }

    const blockedUntil = this.rateLimitedUntil.get(def.upstream) ?? 0;
    if (blockedUntil > Date.now()) {
      await this.release(job.name, (s) => {
        s.notBefore = timestampFromDate(new Date(blockedUntil));
      });
      metrics.runs.inc({ outcome: "skipped", reason: job.reason });
      return;
    }

    const started = process.hrtime.bigint();
    const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;
    // A short lease, renewed while git runs: a replica that dies frees its mirrors within one lease.
    const renew = setInterval(
      () => {
        void status
          .update(job.name, (s) => {
            if (s.leaseOwner !== options.replica) return false;
            s.leaseUntil = timestampFromDate(new Date(Date.now() + options.leaseMs));
          })
          .catch((error: unknown) => log.warn("cannot renew the sync lease", { error }));
      },
      Math.max(1000, options.leaseMs / 3),
    );
    let outcome: SyncOutcome;
    let maintenanceDue = false;
    try {
      outcome = await fetcher.sync(def, { signal: this.abort.signal });
      const prior = await status.get(job.name);
      maintenanceDue =
        !outcome.noop && Date.now() - ms(prior.status.lastMaintenanceAt) >= options.maintenanceIntervalMs;
      if (maintenanceDue) {
        try {
          await fetcher.maintain(def, options.archiveRetentionS);
        } catch (error) {
          log.warn("repository maintenance failed; serving is unaffected", { error });
        }
      }
    } catch (error) {
      clearInterval(renew);
      await this.failed(def, job, error, elapsed(), now);
      return;
    } finally {
      clearInterval(renew);
    }
    {
      const seconds = elapsed();
      const label = outcome.noop ? "noop" : "changed";
      metrics.runs.inc({ outcome: label, reason: job.reason });
      metrics.duration.observe({ outcome: label }, seconds);
      metrics.bytesFetched.inc(outcome.bytesFetched);
      if (outcome.noop) metrics.noops.inc();
      const rerun = await this.release(job.name, (s) => {
        s.state = MirrorState.IN_SYNC;
        s.lastSuccessAt = timestampNow();
        s.lastError = "";
        s.consecutiveFailures = 0;
        s.notBefore = undefined;
        s.refCount = outcome.refCount;
        if (outcome.sizeBytes >= 0) s.sizeBytes = BigInt(outcome.sizeBytes);
        s.lastDurationMs = Math.round(seconds * 1000);
        if (maintenanceDue) s.lastMaintenanceAt = timestampNow();
      });
      if (outcome.changes.length > 0) {
        await bus.publishEvent(
          mirrorSynced,
          {
            name: job.name,
            changes: outcome.changes,
            bytesFetched: BigInt(outcome.bytesFetched),
            durationMs: Math.round(seconds * 1000),
            reason: job.reason,
          },
          { id: `mirror.git.synced:${job.name}:${now}` },
        );
      }
      if (!outcome.noop) {
        log.info("mirror synced", {
          changed_refs: outcome.changes.length,
          bytes_fetched: outcome.bytesFetched,
          first_clone: outcome.firstClone,
          seconds,
        });
      }
      if (rerun) await publishJob(bus, job.name, rerun, `rerun:${job.name}:${now}`);
    }
  }

  private async failed(def: Mirror, job: SyncJob, error: unknown, seconds: number, startedMs: number): Promise<void> {
    const { metrics, options, bus } = this.deps;
    const log = this.deps.logger.child({ component: "sync", mirror: def.name });
    const kind = error instanceof GitError ? error.kind : "other";
    const message = error instanceof NearhubError ? error.rawMessage : (error as Error).message;
    if (kind === "aborted") {
      await this.release(def.name, () => undefined);
      throw error;
    }
    const pause = kind === "auth" || kind === "not-found";
    if (kind === "rate-limited") {
      this.rateLimitedUntil.set(def.upstream, Date.now() + options.rateLimitBackoffMs);
    }
    metrics.runs.inc({ outcome: pause ? "paused" : "failed", reason: job.reason });
    metrics.duration.observe({ outcome: "failed" }, seconds);
    let failures = 0;
    const rerun = await this.release(def.name, (s) => {
      s.consecutiveFailures += 1;
      failures = s.consecutiveFailures;
      s.lastError = message.slice(0, 1000);
      if (pause) {
        s.state = MirrorState.PAUSED;
        s.pausedReason =
          kind === "auth"
            ? `upstream refused the credentials: ${message.slice(0, 300)}; fix the token or GitHub App of ${def.upstream} (NEARHUB_GIT_TOKENS, NEARHUB_GIT_GITHUB_APPS), then: nearhub mirror resume ${def.name}`
            : `upstream has no such repository: ${message.slice(0, 300)}; check the name, then: nearhub mirror resume ${def.name}`;
      } else {
        s.state = MirrorState.FAILED;
        const delay =
          kind === "rate-limited"
            ? options.rateLimitBackoffMs
            : Math.min(options.maxBackoffMs, options.backoffMs * 2 ** Math.min(20, s.consecutiveFailures - 1));
        s.notBefore = timestampFromDate(new Date(Date.now() + delay));
      }
    });
    log.warn(pause ? "mirror paused by its upstream's answer" : "mirror sync failed; will retry with backoff", {
      error: message,
      kind,
      consecutive_failures: failures,
    });
    await bus.publishEvent(
      mirrorFailed,
      { name: def.name, error: message.slice(0, 1000), consecutiveFailures: failures, paused: pause },
      { id: `mirror.git.failed:${def.name}:${startedMs}` },
    );
    if (pause) {
      await bus.publishEvent(
        mirrorPaused,
        { name: def.name, reason: message.slice(0, 1000), by: "sync" },
        { id: `mirror.git.paused:${def.name}:${startedMs}` },
      );
    } else if (rerun) {
      await publishJob(bus, def.name, rerun, `rerun:${def.name}:${startedMs}`);
    }
  }

  /** Ends this replica's lease with `change`; returns the reason of a rerun asked meanwhile. */
  private async release(name: string, change: (s: MirrorStatus) => void): Promise<string | undefined> {
    let rerun: string | undefined;
    await this.deps.status.update(name, (s) => {
      rerun = s.rerunRequested ? s.rerunReason || "manual" : undefined;
      s.rerunRequested = false;
      s.rerunReason = "";
      const paused = s.state === MirrorState.PAUSED;
      change(s);
      // A user's pause during the run wins over the run's outcome.
      if (paused) s.state = MirrorState.PAUSED;
      if (s.leaseOwner === this.deps.options.replica) {
        s.leaseOwner = "";
        s.leaseUntil = undefined;
      }
      s.lastRunFinishedAt = timestampNow();
    });
    return rerun;
  }
}

/** When the mirror's next scheduled sync is due (ms since epoch), with a stable per-name jitter. */
export function nextDueMs(def: Mirror, s: MirrorStatus | undefined): number {
  const last = ms(s?.lastRunFinishedAt);
  const notBefore = ms(s?.notBefore);
  if (!last) return Math.max(ms(def.createdAt), notBefore);
  // After a failure the backoff decides (sooner than the interval at first, later when it keeps failing).
  if (s?.consecutiveFailures && notBefore) return notBefore;
  const intervalMs = def.intervalSeconds * 1000;
  let hash = 0;
  for (const ch of def.name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  const jitter = Math.floor(((hash % 1000) / 1000) * intervalMs * 0.1);
  return Math.max(last + intervalMs + jitter, notBefore);
}

/** Waits until a sync that started at or after `sinceMs` finished; false on timeout. */
export async function waitForRun(
  status: StatusStore,
  name: string,
  sinceMs: number,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<boolean> {
  const giveUp = Date.now() + timeoutMs;
  while (Date.now() < giveUp && !signal?.aborted) {
    const { status: s } = await status.get(name);
    if (ms(s.lastRunStartedAt) >= sinceMs && ms(s.lastRunFinishedAt) >= ms(s.lastRunStartedAt)) return true;
    if (s.state === MirrorState.PAUSED) {
      throw new NearhubError(
        Code.FailedPrecondition,
        `mirror ${name} is paused (${s.pausedReason || "no reason given"}); resume it with: nearhub mirror resume ${name}`,
      );
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  return false;
}
