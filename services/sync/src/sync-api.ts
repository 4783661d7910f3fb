import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, publishAudit, type Bus, type ServiceImpl } from "@nearhub/platform";
import { MirrorSchema, MirrorState, type Mirror, type MirrorStatus, type SyncService } from "@nearhub/proto/sync";
import { mirrorAdded, mirrorPaused, mirrorRemoved, mirrorResumed } from "@nearhub/proto/events";
import { parseInterval, parseMirrorName, parseRefs } from "./mirror-name.js";
import type { RepoLayout } from "./git-repo.js";
import type { MirrorStore } from "./mirror-store.js";
import type { StatusStore } from "./status-store.js";
import { nextDueMs, publishJob, waitForRun } from "./sync-engine.js";

/** Dependencies of the SyncService implementation. */
export interface SyncApiDeps {
  /** Where the bare repositories live; a removed mirror's repository goes with it. */
  layout: RepoLayout;
  store: MirrorStore;
  status: StatusStore;
  bus: Bus;
  upstreams: ReadonlyMap<string, string>;
}

const REASONS = new Set(["manual", "webhook", "pull-through"]);

/** A definition with its runtime status folded in, as callers see it. */
export function mirrorView(def: Mirror, s: MirrorStatus | undefined, now = Date.now()): Mirror {
  const view = create(MirrorSchema, { ...def });
  if (!s) {
    if (view.state === MirrorState.UNSPECIFIED) view.state = MirrorState.PENDING;
    return view;
  }
  view.state = s.state === MirrorState.UNSPECIFIED ? MirrorState.PENDING : s.state;
  view.pausedReason = s.pausedReason;
  if (s.lastSuccessAt) view.lastSuccessAt = s.lastSuccessAt;
  if (s.lastAttemptAt) view.lastAttemptAt = s.lastAttemptAt;
  view.lastError = s.lastError;
  view.lagSeconds = s.lastSuccessAt ? BigInt(Math.max(0, Math.floor((now - timestampMs(s.lastSuccessAt)) / 1000))) : 0n;
  view.sizeBytes = s.sizeBytes;
  view.refCount = s.refCount;
  view.consecutiveFailures = s.consecutiveFailures;
  view.lastDurationMs = s.lastDurationMs;
  if (s.state !== MirrorState.PAUSED) view.nextSyncAt = timestampFromMs(nextDueMs(def, s));
  return view;
}

/**
 * nearhub.sync.v1.SyncService: mirror definitions and their sync. Every change is written to
 * KV (compare-and-set), then published as an event and an audit record, both awaited: a caller
 * that got an answer can rely on downstream services hearing of it.
 */
export function syncApi({ layout, store, status, bus, upstreams }: SyncApiDeps): ServiceImpl<typeof SyncService> {
  const existing = async (raw: string) => {
    const name = parseMirrorName(raw, upstreams);
    const stored = await store.get(name.full);
    if (!stored) {
      throw new NearhubError(
        Code.NotFound,
        `no mirror named ${name.full}; add it with: nearhub mirror add ${name.full}`,
      );
    }
    return stored.mirror;
  };
  const view = async (def: Mirror) => mirrorView(def, (await status.get(def.name)).status);

  return {
    async addMirror(request, ctx) {
      const name = parseMirrorName(request.name, upstreams);
      await ctx.authorize("mirror", name.full);
      const intervalSeconds = parseInterval(request.intervalSeconds);
      const refs = parseRefs(request.refs);
      const found = await store.get(name.full);
      if (found) {
        const m = found.mirror;
        if (m.intervalSeconds === intervalSeconds && m.refs === refs && m.lfs === request.lfs) {
          return { mirror: await view(m), created: false };
        }
        const updated = create(MirrorSchema, {
          ...m,
          intervalSeconds,
          refs,
          lfs: request.lfs,
          generation: m.generation + 1n,
        });
        await store.update(updated, found.revision);
        await bus.publishEvent(
          mirrorAdded,
          { mirror: updated },
          { id: `mirror.added:${updated.name}:${updated.generation}` },
        );
        await publishAudit(bus, "sync", { action: "mirror.update", resource: updated.name }, ctx);
        await publishJob(bus, updated.name, "manual", `changed:${updated.name}:${updated.generation}`);
        return { mirror: await view(updated), created: false };
      }
      const mirror = create(MirrorSchema, {
        name: name.full,
        upstream: name.upstream,
        owner: name.owner,
        repo: name.repo,
        intervalSeconds,
        refs,
        lfs: request.lfs,
        state: MirrorState.PENDING,
        createdAt: timestampNow(),
        generation: 1n,
      });
      await store.create(mirror);
      await bus.publishEvent(mirrorAdded, { mirror }, { id: `mirror.added:${mirror.name}:${mirror.generation}` });
      await publishAudit(bus, "sync", { action: "mirror.add", resource: mirror.name }, ctx);
      // The first sync starts now rather than at the scheduler's next tick.
      await publishJob(bus, mirror.name, "initial", `initial:${mirror.name}:${timestampMs(mirror.createdAt!)}`);
      return { mirror, created: true };
    },

    async getMirror(request, ctx) {
      await ctx.authorize("read", parseMirrorName(request.name, upstreams).full);
      return { mirror: await view(await existing(request.name)) };
    },

    async listMirrors(request, ctx) {
      if (request.prefix.length > 300)
        throw new NearhubError(Code.InvalidArgument, "prefix is longer than 300 characters");
      const [defs, statuses] = await Promise.all([store.list(request.prefix), status.all()]);
      const now = Date.now();
      // Only the mirrors the caller may read.
      const readable = defs.filter((d) => ctx.can("read", d.name));
      return { mirrors: readable.map((d) => mirrorView(d, statuses.get(d.name), now)) };
    },

    async removeMirror(request, ctx) {
      const name = parseMirrorName(request.name, upstreams);
      await ctx.authorize("delete", name.full);
      const found = await store.get(name.full);
      if (!found) return { removed: false };
      await store.remove(name.full);
      await status.remove(name.full);
      // Out of the served tree in one rename, then deleted; clones in progress keep their open files.
      const repo = layout.pathOf(name.full);
      if (existsSync(repo)) {
        const doomed = layout.stagingPath();
        await mkdir(layout.tmp, { recursive: true });
        await rename(repo, doomed);
        await rm(doomed, { recursive: true, force: true });
      }
      const generation = found.mirror.generation + 1n;
      await bus.publishEvent(
        mirrorRemoved,
        { name: name.full, generation },
        { id: `mirror.removed:${name.full}:${generation}` },
      );
      await publishAudit(bus, "sync", { action: "mirror.remove", resource: name.full }, ctx);
      return { removed: true };
    },

    async syncMirror(request, ctx) {
      const reason = request.reason || "manual";
      // A pull-through fill is what any reader's clone of a not-yet-synced mirror triggers.
      await ctx.authorize(reason === "pull-through" ? "read" : "sync", parseMirrorName(request.name, upstreams).full);
      const def = await existing(request.name);
      if (!REASONS.has(reason)) {
        throw new NearhubError(
          Code.InvalidArgument,
          `reason ${JSON.stringify(reason.slice(0, 50))} must be manual, webhook or pull-through`,
        );
      }
      const current = (await status.get(def.name)).status;
      if (current.state === MirrorState.PAUSED) {
        throw new NearhubError(
          Code.FailedPrecondition,
          `mirror ${def.name} is paused (${current.pausedReason || "no reason given"}); resume it with: nearhub mirror resume ${def.name}`,
        );
      }
      const requestedAt = Date.now();
      await publishJob(bus, def.name, reason, `${reason}:${def.name}:${randomUUID()}`);
      await publishAudit(bus, "sync", { action: "mirror.sync", resource: def.name, details: { reason } }, ctx);
      if (!request.wait) return { mirror: await view(def), finished: false };
      const timeoutS = request.timeoutSeconds || 600;
      if (timeoutS > 86_400) throw new NearhubError(Code.InvalidArgument, "timeout_seconds must be at most 86400");
      const finished = await waitForRun(status, def.name, requestedAt, timeoutS * 1000, ctx.signal);
      return { mirror: await view(def), finished };
    },

    async pauseMirror(request, ctx) {
      await ctx.authorize("mirror", parseMirrorName(request.name, upstreams).full);
      const def = await existing(request.name);
      if (request.reason.length > 500)
        throw new NearhubError(Code.InvalidArgument, "reason is longer than 500 characters");
      const reason = request.reason || `paused by ${ctx.principal.subject}`;
      let changed = false;
      await status.update(def.name, (s) => {
        if (s.state === MirrorState.PAUSED) return false;
        changed = true;
        s.state = MirrorState.PAUSED;
        s.pausedReason = reason;
      });
      if (changed) {
        await bus.publishEvent(
          mirrorPaused,
          { name: def.name, reason, by: "user" },
          { id: `mirror.paused:${def.name}:${Date.now()}` },
        );
        await publishAudit(bus, "sync", { action: "mirror.pause", resource: def.name }, ctx);
      }
      return { mirror: await view(def) };
    },

    async resumeMirror(request, ctx) {
      await ctx.authorize("mirror", parseMirrorName(request.name, upstreams).full);
      const def = await existing(request.name);
      let changed = false;
      await status.update(def.name, (s) => {
        if (s.state !== MirrorState.PAUSED) return false;
        changed = true;
        s.state = s.lastSuccessAt ? MirrorState.IN_SYNC : MirrorState.PENDING;
        s.pausedReason = "";
        s.consecutiveFailures = 0;
        s.notBefore = undefined;
      });
      if (changed) {
        await bus.publishEvent(
          mirrorResumed,
          { name: def.name, reason: "", by: "user" },
          { id: `mirror.resumed:${def.name}:${Date.now()}` },
        );
        await publishAudit(bus, "sync", { action: "mirror.resume", resource: def.name }, ctx);
        await publishJob(bus, def.name, "manual", `resume:${def.name}:${randomUUID()}`);
      }
      return { mirror: await view(def) };
    },
  };
}
