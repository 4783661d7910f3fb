import { Counter } from "prom-client";
import { Code, NearhubError, runAs, type Logger, type Principal, type ServiceMetrics } from "@nearhub/platform";
import { MirrorState } from "@nearhub/proto/sync";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { HttpError } from "./router.js";

/** Whether a name matches one of the comma-separated glob patterns (`*` within a segment, `**` anything). */
export function allowedByPatterns(name: string, patterns: string): boolean {
  return patterns
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)
    .some((p) => {
      if (p === "*" || p === "**") return true;
      const re = new RegExp(
        `^${p
          .split("**")
          .map((part) =>
            part
              .split("*")
              .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
              .join("[^/]*"),
          )
          .join(".*")}$`,
      );
      return re.test(name);
    });
}

const EDGE: Principal = { subject: "service:edge", groups: [], method: "service" };

/**
 * Pull-through: the first clone (HTTP or SSH) of a repository not yet mirrored adds it and
 * waits for its first sync; concurrent first clones share one wait, and so one upstream fetch.
 */
export class PullThrough {
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly outcomes: Counter;
  private readonly log: Logger;

  constructor(
    private readonly deps: { backends: Backends; config: EdgeConfig; metrics: ServiceMetrics; logger: Logger },
  ) {
    this.log = deps.logger.child({ component: "pull-through" });
    this.outcomes = new Counter({
      name: "nearhub_edge_git_pull_through_total",
      help: "Pull-through mirror creations by outcome (created, joined, failed, refused)",
      labelNames: ["outcome"],
      registers: [deps.metrics.registry],
    });
  }

  /** Throws (404 or 403 with what to do) unless policy lets a clone create this mirror. */
  admit(name: string): void {
    const { config } = this.deps;
    if (config.NEARHUB_GIT_PULL_THROUGH === "off") {
      this.outcomes.inc({ outcome: "refused" });
      throw new NearhubError(
        Code.NotFound,
        `${name} is not mirrored here; ask an administrator to run: nearhub mirror add ${name}`,
      );
    }
    if (!allowedByPatterns(name, config.NEARHUB_GIT_PULL_THROUGH_ALLOW)) {
      this.outcomes.inc({ outcome: "refused" });
      throw new NearhubError(
        Code.PermissionDenied,
        `${name} is not mirrored and pull-through is not allowed for it (NEARHUB_GIT_PULL_THROUGH_ALLOW); ask an administrator to run: nearhub mirror add ${name}`,
      );
    }
  }

  /** Whether a first sync of this mirror is being waited for in this process. */
  pending(name: string): boolean {
    return this.inflight.has(name);
  }

  /** Admits, creates the mirror when needed and resolves once its first sync succeeded. */
  wait(name: string): Promise<void> {
    const pending = this.inflight.get(name);
    if (pending) {
      this.outcomes.inc({ outcome: "joined" });
      return pending;
    }
    try {
      this.admit(name);
    } catch (error) {
      return Promise.reject(NearhubError.from(error));
    }
    const { backends, config } = this.deps;
    // The first sync is shared by every client waiting for it, so the edge asks for it itself:
    // what a reader may create is the pull-through policy's decision, not the reader's role.
    const work = runAs(EDGE, async () => {
      const timeoutMs = config.NEARHUB_GIT_PULL_THROUGH_TIMEOUT_S * 1000;
      const { mirror, created } = await backends.sync.addMirror({ name });
      this.log.info("waiting for the first sync", { mirror: name, created });
      if (!created && mirror?.state === MirrorState.FAILED) {
        await backends.sync.syncMirror({ name, reason: "pull-through" });
      }
      const giveUp = Date.now() + timeoutMs;
      while (Date.now() < giveUp) {
        const { mirror: m } = await backends.sync.getMirror({ name });
        if (m?.lastSuccessAt) {
          this.outcomes.inc({ outcome: "created" });
          return;
        }
        if (m && (m.state === MirrorState.FAILED || m.state === MirrorState.PAUSED)) {
          this.outcomes.inc({ outcome: "failed" });
          throw new HttpError(
            502,
            Code.Unavailable,
            `the first sync of ${name} from its upstream failed: ${m.pausedReason || m.lastError || "unknown error"}`,
          );
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      this.outcomes.inc({ outcome: "failed" });
      throw new HttpError(504, Code.DeadlineExceeded, `the first sync of ${name} is still running; try again shortly`);
    }).finally(() => this.inflight.delete(name));
    this.inflight.set(name, work);
    // Callers may leave (a client that hangs up); the failure is theirs to report, not unhandled.
    work.catch(() => undefined);
    return work;
  }
}
