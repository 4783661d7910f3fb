import { createHash } from "node:crypto";
import { create, toJsonString, fromJsonString } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import type { KV } from "@nats-io/kv";
import {
  Code,
  asService,
  NearhubError,
  publishAudit,
  type Bus,
  type CallContext,
  type Client,
  type Logger,
  type ServiceImpl,
  type ServiceMetrics,
} from "@nearhub/platform";
import { modelMirrorFailed, modelMirrorSynced } from "@nearhub/proto/events";
import { ModelMirrorSchema, type ModelMirror, type ModelMirrorService } from "@nearhub/proto/model-mirror";
import { RepoKind, type RegistryService, type RepoId } from "@nearhub/proto/registry";
import type { StorageService } from "@nearhub/proto/storage";
import { Counter, Histogram } from "prom-client";

const PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$/;
const REF = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$/;
const PLURAL: Record<number, string> = {
  [RepoKind.MODEL]: "models",
  [RepoKind.DATASET]: "datasets",
  [RepoKind.SPACE]: "spaces",
};
const PREFIX: Record<number, string> = {
  [RepoKind.MODEL]: "",
  [RepoKind.DATASET]: "datasets/",
  [RepoKind.SPACE]: "spaces/",
};
/** The reserved manifest entry the edge reads repo card data from (same as the edge's). */
const INFO_PATH = ".nearhub/hf-info.json";
const EMPTY_SHA256 = createHash("sha256").digest("hex");
const LEASE_MS = 10 * 60 * 1000;
const MAX_PATTERNS = 64;

const invalid = (message: string) => new NearhubError(Code.InvalidArgument, message);

function checkRepo(repo: RepoId | undefined): {
  kind: RepoKind;
  id: string;
  key: string;
  label: string;
  resource: string;
} {
  if (!repo || !PLURAL[repo.kind]) throw invalid("repo must be {kind: REPO_KIND_MODEL|DATASET|SPACE, id: owner/name}");
  const parts = repo.id.split("/");
  if (repo.id === "" || parts.length > 2 || parts.some((p) => !PART.test(p) || p.includes("..") || p.includes("--"))) {
    throw invalid(
      `repo id ${JSON.stringify(repo.id.slice(0, 200))} is not valid: owner/name or name, each part 1-96 letters, digits, '-', '_' or '.'`,
    );
  }
  const kind = PLURAL[repo.kind]!.slice(0, -1);
  return {
    kind: repo.kind,
    id: repo.id,
    key: `${kind}.${Buffer.from(repo.id).toString("base64url")}`,
    label: `${kind} ${repo.id}`,
    // The RBAC resource: `models/acme/bert`.
    resource: `${PLURAL[repo.kind] ?? "models"}/${repo.id}`,
  };
}

/** fnmatch as huggingface_hub's allow/ignore patterns use it: `*` matches across '/'. */
export function fnmatch(pattern: string, path: string): boolean {
  const re = pattern
    .split("")
    .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
    .join("");
  return new RegExp(`^${re}$`).test(path) || (pattern.endsWith("/") && path.startsWith(pattern));
}

function checkPatterns(list: string[], what: string): string[] {
  if (list.length > MAX_PATTERNS) throw invalid(`at most ${MAX_PATTERNS} ${what} patterns`);
  for (const p of list)
    if (p === "" || p.length > 256)
      throw invalid(`${what} pattern ${JSON.stringify(p.slice(0, 80))} must be 1-256 characters`);
  return list;
}

function checkPath(path: string): string {
  if (
    path === "" ||
    path.includes("\\") ||
    path.includes("\0") ||
    path.split("/").some((s) => s === "" || s === "." || s === "..")
  ) {
    throw new NearhubError(
      Code.DataLoss,
      `the upstream listed an unsafe file path ${JSON.stringify(path.slice(0, 200))}`,
    );
  }
  return path;
}

interface Sibling {
  rfilename: string;
  size?: number;
  blobId?: string;
  lfs?: { sha256: string; size: number };
}

/**
 * Scheduled mirrors of Hugging Face repos: definitions and status in the `model-mirrors` KV
 * bucket, a tick that snapshots due mirrors (one replica per mirror, by a compare-and-set
 * lease), and the snapshot itself: the revision's metadata and small files, the LFS files the
 * include/exclude patterns select (streamed into storage, which verifies the sha256 before
 * committing), then the manifest published to the registry and the branch moved.
 */
export class ModelMirrors {
  private timer: NodeJS.Timeout | undefined;
  private readonly running = new Map<string, Promise<ModelMirror>>();
  private readonly outcomes: Counter;
  private readonly duration: Histogram;
  private readonly fetched: Counter;

  constructor(
    private readonly deps: {
      kv: KV;
      bus: Bus;
      registry: Client<typeof RegistryService>;
      storage: Client<typeof StorageService>;
      upstream: string;
      token?: string;
      timeoutMs: number;
      tickMs: number;
      logger: Logger;
      metrics: ServiceMetrics;
    },
  ) {
    const registers = [deps.metrics.registry];
    this.outcomes = new Counter({
      name: "nearhub_model_mirror_snapshots_total",
      help: "Model mirror snapshots by outcome (synced, unchanged, failed).",
      labelNames: ["outcome"],
      registers,
    });
    this.duration = new Histogram({
      name: "nearhub_model_mirror_snapshot_seconds",
      help: "Duration of model mirror snapshots.",
      buckets: [0.1, 0.5, 1, 5, 30, 120, 600, 3600],
      registers,
    });
    this.fetched = new Counter({
      name: "nearhub_model_mirror_fetched_bytes_total",
      help: "Bytes model mirrors fetched from the upstream.",
      registers,
    });
  }

  private async read(key: string): Promise<{ mirror: ModelMirror; revision: number } | undefined> {
    const e = await this.deps.kv.get(key);
    if (!e || e.operation !== "PUT") return undefined;
    return { mirror: fromJsonString(ModelMirrorSchema, e.string()), revision: e.revision };
  }

  private async write(key: string, mirror: ModelMirror, revision: number | undefined): Promise<void> {
    const data = toJsonString(ModelMirrorSchema, mirror);
    if (revision === undefined) await this.deps.kv.create(key, data);
    else await this.deps.kv.update(key, data, revision);
  }

  /** Re-reads and changes a record by compare-and-set until it sticks. */
  private async mutate(key: string, change: (m: ModelMirror) => void): Promise<ModelMirror> {
    for (let i = 0; i < 20; i++) {
      const current = await this.read(key);
      if (!current) throw new NearhubError(Code.NotFound, "the model mirror was removed");
      change(current.mirror);
      try {
        await this.write(key, current.mirror, current.revision);
        return current.mirror;
      } catch (error) {
        if (!/wrong last sequence|key exists/i.test((error as Error).message)) throw error;
      }
    }
    throw new NearhubError(Code.Aborted, "the model mirror is changing too fast; retry");
  }

  start(): void {
    this.timer = setInterval(() => {
      this.tick().catch((error: unknown) => this.deps.logger.warn("model mirror tick failed", { error }));
    }, this.deps.tickMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await Promise.allSettled([...this.running.values()]);
  }

  /** Snapshots every mirror that is due and not being snapshotted by another replica. */
  async tick(): Promise<void> {
    const keys: string[] = [];
    for await (const k of await this.deps.kv.keys()) keys.push(k);
    for (const key of keys) {
      const r = await this.read(key);
      if (!r || this.running.has(key)) continue;
      const due = r.mirror.nextSyncAt ? timestampMs(r.mirror.nextSyncAt) : 0;
      if (due > Date.now()) continue;
      void this.run(key).catch(() => undefined);
    }
  }

  /** Runs one snapshot of the mirror under `key` (joining one already running here). */
  private run(key: string): Promise<ModelMirror> {
    const existing = this.running.get(key);
    if (existing) return existing;
    const work = this.snapshotWithLease(key).finally(() => this.running.delete(key));
    this.running.set(key, work);
    return work;
  }

  private async snapshotWithLease(key: string): Promise<ModelMirror> {
    // The lease: next_sync_at moves past now, by compare-and-set, so one replica runs it.
    const leased = await this.mutate(key, (m) => {
      m.syncing = true;
      m.lastAttemptAt = timestampFromMs(Date.now());
      m.nextSyncAt = timestampFromMs(Date.now() + LEASE_MS);
    });
    const started = Date.now();
    const repo = checkRepo(leased.repo);
    try {
      const result = await this.snapshot(leased);
      const mirror = await this.mutate(key, (m) => {
        m.syncing = false;
        m.lastSuccessAt = timestampFromMs(Date.now());
        m.lastError = "";
        m.consecutiveFailures = 0;
        m.mirroredCommit = result.commit;
        m.upstreamCommit = result.commit;
        m.fileCount = BigInt(result.files);
        m.totalBytes = BigInt(result.bytes);
        m.nextSyncAt = timestampFromMs(Date.now() + m.intervalSeconds * 1000);
      });
      this.outcomes.inc({ outcome: result.commit === leased.mirroredCommit ? "unchanged" : "synced" });
      if (result.commit !== leased.mirroredCommit) {
        await this.deps.bus.publishEvent(
          modelMirrorSynced,
          {
            repo: { kind: repo.kind, id: repo.id },
            revision: leased.revision,
            commit: result.commit,
            previousCommit: leased.mirroredCommit,
            fileCount: BigInt(result.files),
            totalBytes: BigInt(result.bytes),
            fetchedBytes: BigInt(result.fetched),
          },
          { id: `mirror.model.synced:${repo.key}:${leased.revision}:${result.commit}` },
        );
      }
      this.deps.logger.info("model mirror synced", {
        repo: repo.label,
        commit: result.commit,
        fetched: result.fetched,
      });
      return mirror;
    } catch (error) {
      const message = error instanceof NearhubError ? error.rawMessage : (error as Error).message;
      const mirror = await this.mutate(key, (m) => {
        m.syncing = false;
        m.lastError = message.slice(0, 2000);
        m.consecutiveFailures += 1;
        const backoff = Math.min(m.intervalSeconds * 1000, 30_000 * 2 ** Math.min(m.consecutiveFailures, 10));
        m.nextSyncAt = timestampFromMs(Date.now() + backoff);
        const seen = (error as { upstreamCommit?: string }).upstreamCommit;
        if (seen) m.upstreamCommit = seen;
      });
      this.outcomes.inc({ outcome: "failed" });
      await this.deps.bus.publishEvent(
        modelMirrorFailed,
        {
          repo: { kind: repo.kind, id: repo.id },
          revision: leased.revision,
          error: message.slice(0, 2000),
          consecutiveFailures: mirror.consecutiveFailures,
        },
        { id: `mirror.model.failed:${repo.key}:${leased.revision}:${mirror.consecutiveFailures}:${started}` },
      );
      this.deps.logger.warn("model mirror failed", { repo: repo.label, error });
      return mirror;
    } finally {
      this.duration.observe((Date.now() - started) / 1000);
    }
  }

  private headers(): Record<string, string> {
    return {
      "user-agent": "nearhub-mirror/0.1",
      ...(this.deps.token ? { authorization: `Bearer ${this.deps.token}` } : {}),
    };
  }

  private async get(url: string, timeoutMs: number): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(url, { headers: this.headers(), signal: AbortSignal.timeout(timeoutMs) });
    } catch (error) {
      throw new NearhubError(
        Code.Unavailable,
        `the upstream ${this.deps.upstream} is unreachable: ${((error as Error).cause as Error | undefined)?.message ?? (error as Error).message}`,
      );
    }
    if (!res.ok) {
      const code = res.headers.get("x-error-code");
      const message = res.headers.get("x-error-message") ?? (await res.text().catch(() => "")).slice(0, 300);
      throw new NearhubError(
        res.status === 404 || code === "RepoNotFound" || code === "RevisionNotFound"
          ? Code.NotFound
          : res.status === 401 || res.status === 403
            ? Code.PermissionDenied
            : Code.Unavailable,
        `the upstream answered ${res.status}${code ? ` ${code}` : ""}: ${message}`,
      );
    }
    return res;
  }

  /** One snapshot: returns the commit and the sizes. */
  private async snapshot(m: ModelMirror): Promise<{ commit: string; files: number; bytes: number; fetched: number }> {
    const repo = checkRepo(m.repo);
    const base = this.deps.upstream.replace(/\/+$/, "");
    const infoRes = await this.get(
      `${base}/api/${PLURAL[repo.kind] ?? "models"}/${repo.id}/revision/${encodeURIComponent(m.revision)}?blobs=true`,
      this.deps.timeoutMs,
    );
    const info = stripXet(await infoRes.json()) as {
      sha?: unknown;
      siblings?: Sibling[];
      lastModified?: unknown;
    } & Record<string, unknown>;
    const commit = typeof info.sha === "string" && /^[0-9a-f]{40}$/.test(info.sha) ? info.sha : undefined;
    if (!commit || !Array.isArray(info.siblings))
      throw new NearhubError(Code.DataLoss, "the upstream's repo info has no commit sha or siblings");
    try {
      if (commit === m.mirroredCommit) {
        const stored = await this.deps.registry
          .getRevision({ repo: { kind: repo.kind, id: repo.id }, revision: commit })
          .catch(() => undefined);
        if (stored?.revision) {
          const files = stored.revision.entries.filter((e) => e.path !== INFO_PATH);
          return { commit, files: files.length, bytes: files.reduce((a, e) => a + Number(e.size), 0), fetched: 0 };
        }
      }
      return await this.publish(repo, m, commit, info, base);
    } catch (error) {
      Object.assign(error as object, { upstreamCommit: commit });
      throw error;
    }
  }

  private async publish(
    repo: ReturnType<typeof checkRepo>,
    m: ModelMirror,
    commit: string,
    info: { siblings?: Sibling[]; lastModified?: unknown } & Record<string, unknown>,
    base: string,
  ): Promise<{ commit: string; files: number; bytes: number; fetched: number }> {
    const entries: Array<{ path: string; sha256: string; size: bigint; gitBlobSha1: string; lfs: boolean }> = [];
    const wanted: Array<{ path: string; sha256: string; size: number }> = [];
    let fetched = 0;
    const fileUrl = (path: string) =>
      `${base}/${PREFIX[repo.kind] ?? ""}${repo.id}/resolve/${commit}/${path.split("/").map(encodeURIComponent).join("/")}`;
    for (const s of info.siblings ?? []) {
      const path = checkPath(String(s.rfilename));
      if (path === INFO_PATH) continue;
      if (s.lfs) {
        if (!/^[0-9a-f]{64}$/.test(s.lfs.sha256))
          throw new NearhubError(Code.DataLoss, `the upstream's LFS entry ${path} has no sha256`);
        entries.push({ path, sha256: s.lfs.sha256, size: BigInt(s.lfs.size), gitBlobSha1: "", lfs: true });
        const selected =
          (m.include.length === 0 || m.include.some((p) => fnmatch(p, path))) &&
          !m.exclude.some((p) => fnmatch(p, path));
        if (selected) wanted.push({ path, sha256: s.lfs.sha256, size: s.lfs.size });
      } else if (s.size === 0) {
        entries.push({
          path,
          sha256: EMPTY_SHA256,
          size: 0n,
          gitBlobSha1: "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
          lfs: false,
        });
      } else {
        const bytes = Buffer.from(await (await this.get(fileUrl(path), this.deps.timeoutMs)).arrayBuffer());
        fetched += bytes.byteLength;
        const oid = createHash("sha1").update(`blob ${bytes.byteLength}\0`).update(bytes).digest("hex");
        if (s.blobId && oid !== s.blobId) {
          throw new NearhubError(
            Code.DataLoss,
            `the upstream's ${path} hashes to git blob ${oid}, not the listed ${s.blobId}`,
          );
        }
        const sha256 = createHash("sha256").update(bytes).digest("hex");
        await this.put(
          sha256,
          bytes.byteLength,
          (async function* () {
            yield bytes;
          })(),
        );
        entries.push({ path, sha256, size: BigInt(bytes.byteLength), gitBlobSha1: oid, lfs: false });
      }
    }
    // LFS files the patterns select, unless storage has them: streamed into storage, which
    // refuses bytes that do not hash to the upstream's oid.
    const present = new Set<string>();
    for (let i = 0; i < wanted.length; i += 500) {
      const batch = [...new Set(wanted.slice(i, i + 500).map((w) => w.sha256))];
      for (const sha of (await this.deps.storage.hasBlobs({ sha256: batch })).present) present.add(sha);
    }
    for (const w of wanted) {
      if (present.has(w.sha256)) continue;
      const res = await this.get(fileUrl(w.path), this.deps.timeoutMs);
      if (!res.body) throw new NearhubError(Code.Unavailable, `the upstream sent no body for ${w.path}`);
      const counter = this.fetched;
      const body = res.body;
      await this.put(
        w.sha256,
        w.size,
        (async function* () {
          for await (const chunk of body as AsyncIterable<Uint8Array>) {
            counter.inc(chunk.byteLength);
            for (let i = 0; i < chunk.byteLength; i += 1024 * 1024) yield chunk.subarray(i, i + 1024 * 1024);
          }
        })(),
      );
      fetched += w.size;
      present.add(w.sha256);
    }
    const { siblings: _s, sha: _sha, ...card } = info;
    const cardBytes = Buffer.from(JSON.stringify(card));
    const cardSha = createHash("sha256").update(cardBytes).digest("hex");
    await this.put(
      cardSha,
      cardBytes.byteLength,
      (async function* () {
        yield cardBytes;
      })(),
    );
    const modified = Date.parse(typeof info.lastModified === "string" ? info.lastModified : "");
    const branch = /^[0-9a-f]{40}$/.test(m.revision) ? "" : m.revision;
    try {
      await this.deps.registry.putRevision({
        repo: { kind: repo.kind, id: repo.id },
        revision: {
          commit,
          message: `mirrored from ${base}`,
          createdAt: timestampFromMs(Number.isFinite(modified) ? modified : Date.now()),
          entries: [
            ...entries,
            { path: INFO_PATH, sha256: cardSha, size: BigInt(cardBytes.byteLength), gitBlobSha1: "", lfs: false },
          ],
        },
        branch,
        allowMissingBlobs: true,
      });
    } catch (error) {
      // The edge pinned this commit first (with its own card data): keep it, move the branch.
      if (!(error instanceof NearhubError && error.code === Code.AlreadyExists)) throw error;
      if (branch)
        await this.deps.registry.updateRef({
          repo: { kind: repo.kind, id: repo.id },
          kind: 1,
          name: branch,
          newCommit: commit,
        });
    }
    return { commit, files: entries.length, bytes: entries.reduce((a, e) => a + Number(e.size), 0), fetched };
  }

  private async put(sha256: string, size: number, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    await this.deps.storage.putBlob(
      (async function* () {
        yield { part: { case: "header" as const, value: { sha256, size: BigInt(size) } } };
        for await (const chunk of chunks) yield { part: { case: "chunk" as const, value: chunk } };
      })(),
      { timeoutMs: 6 * 3600_000 },
    );
  }

  api(): ServiceImpl<typeof ModelMirrorService> {
    const audit = (ctx: CallContext, action: string, resource: string) =>
      publishAudit(this.deps.bus, "sync", { action, resource, details: {} }, ctx);
    return {
      addModelMirror: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("mirror", repo.resource);
        const revision = request.revision === "" ? "main" : request.revision;
        if (!REF.test(revision) || revision.includes("..")) {
          throw invalid(`revision ${JSON.stringify(revision.slice(0, 100))} must be a branch, tag or 40-hex commit`);
        }
        const interval = request.intervalSeconds === 0 ? 6 * 3600 : request.intervalSeconds;
        if (interval < 60 || interval > 30 * 86_400)
          throw invalid("interval_seconds must be between 60 (1m) and 2592000 (30d)");
        const include = checkPatterns(request.include, "include");
        const exclude = checkPatterns(request.exclude, "exclude");
        const key = repo.key;
        const current = await this.read(key);
        const mirror =
          current?.mirror ??
          create(ModelMirrorSchema, { repo: { kind: repo.kind, id: repo.id }, createdAt: timestampFromMs(Date.now()) });
        mirror.revision = revision;
        mirror.include = include;
        mirror.exclude = exclude;
        mirror.intervalSeconds = interval;
        mirror.nextSyncAt = timestampFromMs(Date.now());
        try {
          await this.write(key, mirror, current?.revision);
        } catch (error) {
          throw new NearhubError(
            Code.Aborted,
            `the mirror of ${repo.label} changed meanwhile; retry (${(error as Error).message})`,
          );
        }
        await audit(ctx, current ? "model-mirror.update" : "model-mirror.add", repo.label);
        // The snapshot is the mirror's own work, not the caller's: it runs as the sync service.
        void asService(() => this.tick()).catch(() => undefined);
        return { mirror, created: !current };
      },
      getModelMirror: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("read", repo.resource);
        const r = await this.read(repo.key);
        if (!r) throw new NearhubError(Code.NotFound, `${repo.label} is not mirrored; add it with nearhub model add`);
        return { mirror: r.mirror };
      },
      listModelMirrors: async (_request, ctx) => {
        const mirrors: ModelMirror[] = [];
        const keys: string[] = [];
        for await (const k of await this.deps.kv.keys()) keys.push(k);
        for (const k of keys.sort()) {
          const r = await this.read(k);
          if (r && ctx.can("read", `${PLURAL[r.mirror.repo?.kind ?? 0] ?? "models"}/${r.mirror.repo?.id ?? ""}`))
            mirrors.push(r.mirror);
        }
        return { mirrors };
      },
      removeModelMirror: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("delete", repo.resource);
        const existed = (await this.read(repo.key)) !== undefined;
        if (existed) {
          await this.deps.kv.delete(repo.key);
          await audit(ctx, "model-mirror.remove", repo.label);
        }
        return { removed: existed };
      },
      syncModelMirror: async (request, ctx) => {
        const repo = checkRepo(request.repo);
        await ctx.authorize("sync", repo.resource);
        if (!(await this.read(repo.key)))
          throw new NearhubError(Code.NotFound, `${repo.label} is not mirrored; add it with nearhub model add`);
        await audit(ctx, "model-mirror.sync", repo.label);
        return { mirror: await this.run(repo.key) };
      },
    };
  }
}

function stripXet<T>(value: T): T {
  if (Array.isArray(value)) return (value as unknown[]).map((v) => stripXet(v)) as T;
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (!/^xet/i.test(k)) out[k] = stripXet(v);
    return out as T;
  }
  return value;
}
