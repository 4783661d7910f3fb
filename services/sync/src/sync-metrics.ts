import { Counter, Gauge, Histogram } from "prom-client";
import type { ServiceMetrics } from "@nearhub/platform";

/** The sync engine's business metrics, on the service's registry. */
export class SyncMetrics {
  /** Sync runs by outcome: changed, noop, failed, paused, skipped. */
  readonly runs: Counter<"outcome" | "reason">;
  /** Duration of sync runs that reached upstream. */
  readonly duration: Histogram<"outcome">;
  readonly bytesFetched: Counter;
  /** Syncs skipped because upstream equalled the served refs. */
  readonly noops: Counter;
  /** Mirrors by state, refreshed by the scheduler. */
  readonly mirrorsByState: Gauge<"state">;
  /** Worst lag (seconds since last success) per state bucket, refreshed by the scheduler. */
  readonly maxLag: Gauge;
  readonly jobsPublished: Counter<"reason">;
  /** Served upload-pack requests and bytes. */
  readonly served: Counter<"kind" | "status">;
  readonly servedBytes: Counter;

  constructor(metrics: ServiceMetrics) {
    const registers = [metrics.registry];
    this.runs = new Counter({
      name: "nearhub_git_sync_runs_total",
      help: "Git sync runs by outcome (changed, noop, failed, paused, skipped) and reason",
      labelNames: ["outcome", "reason"],
      registers,
    });
    this.duration = new Histogram({
      name: "nearhub_git_sync_duration_seconds",
      help: "Time of git sync runs by outcome",
      labelNames: ["outcome"],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200],
      registers,
    });
    this.bytesFetched = new Counter({
      name: "nearhub_git_fetched_bytes_total",
      help: "Pack bytes fetched from upstreams",
      registers,
    });
    this.noops = new Counter({
      name: "nearhub_git_sync_noop_total",
      help: "Syncs skipped because ls-remote matched the served refs",
      registers,
    });
    this.mirrorsByState = new Gauge({
      name: "nearhub_git_mirrors",
      help: "Git mirrors by state",
      labelNames: ["state"],
      registers,
    });
    this.maxLag = new Gauge({
      name: "nearhub_git_mirror_max_lag_seconds",
      help: "Largest time since a mirror last matched its upstream, over active mirrors",
      registers,
    });
    this.jobsPublished = new Counter({
      name: "nearhub_git_sync_jobs_published_total",
      help: "Sync jobs put on the SYNC_JOBS work queue by reason",
      labelNames: ["reason"],
      registers,
    });
    this.served = new Counter({
      name: "nearhub_git_upload_pack_requests_total",
      help: "Internal git smart-HTTP requests by kind (advertise, upload-pack) and status",
      labelNames: ["kind", "status"],
      registers,
    });
    this.servedBytes = new Counter({
      name: "nearhub_git_served_bytes_total",
      help: "Bytes upload-pack sent to clients",
      registers,
    });
  }
}
