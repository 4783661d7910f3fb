import { MirrorState, type Mirror, type MirrorStatus } from "@nearhub/proto/sync";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Bus, Logger } from "@nearhub/platform";
import type { MirrorStore } from "./mirror-store.js";
import type { StatusStore } from "./status-store.js";
import { nextDueMs, publishJob } from "./sync-engine.js";
import type { SyncMetrics } from "./sync-metrics.js";

/**
 * Every tick, each replica looks at every mirror and puts the due ones on the work queue. The
 * job's msgID is the mirror name and its due time, which every replica computes alike from
 * the shared status, so however many replicas run, JetStream keeps one job per due time.
 */
export class Scheduler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly published = new Map<string, string>();

  constructor(
    private readonly deps: {
      bus: Bus;
      mirrors: MirrorStore;
      status: StatusStore;
      metrics: SyncMetrics;
      logger: Logger;
      tickMs: number;
    },
  ) {}

  /** Starts ticking (first tick at once). */
  start(): void {
    const loop = () => {
      this.running = this.tick()
        .then(() => undefined)
        .catch((error: unknown) => this.deps.logger.warn("scheduler tick failed", { component: "scheduler", error }))
        .finally(() => {
          if (this.timer !== undefined) this.timer = setTimeout(loop, this.deps.tickMs);
        });
    };
    this.timer = setTimeout(loop, 0);
  }

  /** Stops ticking and waits for the tick in progress. */
  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** One pass: publish due jobs, refresh the state gauges. Returns how many jobs were published. */
  async tick(now = Date.now()): Promise<number> {
    const [defs, statuses] = await Promise.all([this.deps.mirrors.list(), this.deps.status.all()]);
    const counts = new Map<MirrorState, number>();
    let maxLag = 0;
    let published = 0;
    for (const def of defs) {
      const s = statuses.get(def.name);
      const state = s?.state ?? MirrorState.PENDING;
      counts.set(state, (counts.get(state) ?? 0) + 1);
      if (state === MirrorState.PAUSED) continue;
      const lastSuccess = s?.lastSuccessAt ? timestampMs(s.lastSuccessAt) : 0;
      if (lastSuccess) maxLag = Math.max(maxLag, (now - lastSuccess) / 1000);
      if (this.leased(s, now)) continue;
      const due = nextDueMs(def, s);
      if (now < due) continue;
      const msgID = `sched:${def.name}:${due}`;
      if (this.published.get(def.name) === msgID) continue;
      await publishJob(this.deps.bus, def.name, "scheduled", msgID);
      this.published.set(def.name, msgID);
      this.deps.metrics.jobsPublished.inc({ reason: "scheduled" });
      published++;
    }
    for (const name of this.published.keys())
      if (!defs.some((d: Mirror) => d.name === name)) this.published.delete(name);
    this.deps.metrics.mirrorsByState.reset();
    for (const [state, count] of counts) this.deps.metrics.mirrorsByState.set({ state: MirrorState[state] }, count);
    this.deps.metrics.maxLag.set(maxLag);
    return published;
  }

  private leased(s: MirrorStatus | undefined, now: number): boolean {
    return !!s?.leaseOwner && !!s.leaseUntil && timestampMs(s.leaseUntil) > now;
  }
}
