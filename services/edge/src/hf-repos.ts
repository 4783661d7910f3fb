import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, NearhubError, asService, type Client, type Logger } from "@nearhub/platform";
import { RefKind, RepoKind, type RegistryService, type Revision } from "@nearhub/proto/registry";
import type { StorageService } from "@nearhub/proto/storage";
import { Counter, type Registry } from "prom-client";
import type { BlobCache, BlobReader } from "./hf-cache.js";
import {
  COMMIT,
  HfError,
  UpstreamUnavailable,
  checkFilePath,
  fileEntry,
  gitBlobSha1,
  treeOids,
  type FileEntry,
  type HfType,
} from "./hf-names.js";
import type { HfUpstream, UpstreamInfo } from "./hf-upstream.js";

/** The reserved manifest entry holding the upstream's repo card data; never listed. */
export const INFO_PATH = ".nearhub/hf-info.json";
export const EMPTY_SHA256 = createHash("sha256").digest("hex");
const KIND: Record<HfType, RepoKind> = { model: RepoKind.MODEL, dataset: RepoKind.DATASET, space: RepoKind.SPACE };
const PINNED_CACHE = 256;
const SMALL_FILE_CONCURRENCY = 8;
const MAX_SMALL_FILE = 64 * 1024 * 1024;
/** How long a branch read from the registry (no upstream) is reused: a mirror moves it. */
const REGISTRY_REF_TTL_MS = 2000;

/** A revision pinned to its commit, with everything the HF API answers about it. */
export interface Pinned {
  type: HfType;
  id: string;
  commit: string;
  /** By path, without the reserved info entry. */
  files: Map<string, FileEntry>;
  /** Every directory ("" is the root) → git tree id. */
  dirs: Map<string, string>;
  /** The upstream's repo info at the time of pinning (card data, tags, …) minus siblings. */
  info: Record<string, unknown>;
  lastModified: string;
}

/**
 * Hugging Face repos on top of the registry: revisions resolve to pinned commits (immutable,
 * served without any upstream call), branch names are re-validated upstream at most every
 * TTL and served from the last known commit when the upstream fails, and a repo or commit not
 * yet stored is pinned from the upstream on first use (pull-through).
 */
export class HfRepos {
  private readonly pinned = new Map<string, Pinned>();
  private readonly refs = new Map<string, { at: number; commit: string }>();
  private readonly registryRefs = new Map<string, { at: number; commit: string }>();
  private readonly inflight = new Map<string, Promise<Pinned>>();
  private readonly uploads = new Set<Promise<void>>();
  private readonly downloads = new Map<string, number>();
  private readonly pins: Counter;
  private readonly stale: Counter;
  private readonly stores: Counter;
  private readonly downloadCount: Counter;

  constructor(
    private readonly deps: {
      registry: Client<typeof RegistryService>;
      storage: Client<typeof StorageService>;
      upstream: HfUpstream | undefined;
      cache: BlobCache;
      refTtlMs: number;
      logger: Logger;
      metrics: Registry;
    },
  ) {
    const registers = [deps.metrics];
    this.pins = new Counter({
      name: "nearhub_hf_pull_through_total",
      help: "Revisions pinned from the upstream on first use, by outcome.",
      labelNames: ["outcome"],
      registers,
    });
    this.stale = new Counter({
      name: "nearhub_hf_stale_served_total",
      help: "Branch lookups answered from the last known commit because the upstream failed.",
      registers,
    });
    this.stores = new Counter({
      name: "nearhub_hf_blob_uploads_total",
      help: "Blobs pulled from upstream and committed to storage, by outcome.",
      labelNames: ["outcome"],
      registers,
    });
    this.downloadCount = new Counter({
      name: "nearhub_hf_downloads_total",
      help: "File downloads served (GET without a range, or from byte 0), by repo.",
      labelNames: ["type", "repo"],
      registers,
    });
  }

  private get log(): Logger {
    return this.deps.logger;
  }

  /** Resolves a revision (`HEAD`, a branch or tag, a commit) of a repo to a pinned revision. */
  async resolve(type: HfType, id: string, revision: string): Promise<Pinned> {
    const key = `${type}/${id}@${revision}`;
    const running = this.inflight.get(key);
    if (running) return running;
    const work = this.resolveNow(type, id, revision, key).finally(() => this.inflight.delete(key));
    this.inflight.set(key, work);
    return work;
  }

  private async resolveNow(type: HfType, id: string, revision: string, key: string): Promise<Pinned> {
    const { upstream, refTtlMs } = this.deps;
    if (COMMIT.test(revision)) {
      const stored = await this.fromRegistry(type, id, revision);
      if (stored) return stored;
      if (!upstream) throw await this.notStored(type, id, revision);
      return this.pinFrom(type, id, await upstream.info(type, id, revision));
    }
    const branch = revision === "HEAD" ? "main" : revision;
    const known = this.refs.get(key);
    if (known && Date.now() - known.at < refTtlMs) {
      const p = this.pinned.get(`${type}/${id}@${known.commit}`) ?? (await this.fromRegistry(type, id, known.commit));
      if (p) return p;
    }
    if (!upstream) {
      // Without an upstream the registry is the truth; its answer is reused for a few seconds.
      const recent = this.registryRefs.get(key);
      if (recent && Date.now() - recent.at < REGISTRY_REF_TTL_MS) {
        const p = this.pinned.get(`${type}/${id}@${recent.commit}`);
        if (p) return p;
      }
      const stored = await this.fromRegistry(type, id, branch);
      if (stored) {
        this.registryRefs.set(key, { at: Date.now(), commit: stored.commit });
        return stored;
      }
      throw await this.notStored(type, id, revision);
    }
    let info: UpstreamInfo;
    try {
      info = await upstream.info(type, id, revision);
    } catch (error) {
      if (!(error instanceof UpstreamUnavailable)) throw error;
      const stored = await this.fromRegistry(type, id, branch);
      if (stored) {
        this.stale.inc();
        this.log.warn("upstream unavailable; serving the last known commit", {
          repo: key,
          commit: stored.commit,
          error,
        });
        // Try the upstream again in a while, not on every request.
        this.refs.set(key, { at: Date.now() - refTtlMs + Math.min(refTtlMs, 30_000), commit: stored.commit });
        return stored;
      }
      throw new HfError(
        504,
        `${error.message}; ${type} ${id} at ${revision} is not stored here yet, so it cannot be served until the upstream answers`,
      );
    }
    const pinned = (await this.fromRegistry(type, id, info.sha)) ?? (await this.pinFrom(type, id, info));
    // Following the upstream's branch is the mirror's own work, whoever asked.
    await asService(() =>
      this.deps.registry.updateRef({
        repo: { kind: KIND[type], id },
        kind: RefKind.BRANCH,
        name: branch,
        newCommit: info.sha,
      }),
    );
    this.refs.set(key, { at: Date.now(), commit: info.sha });
    return pinned;
  }

  /** RepoNotFound or RevisionNotFound, whichever is true of the registry. */
  private async notStored(type: HfType, id: string, revision: string): Promise<HfError> {
    try {
      await this.deps.registry.getRepo({ repo: { kind: KIND[type], id } });
    } catch (error) {
      if (error instanceof NearhubError && error.code === Code.NotFound) {
        return new HfError(
          404,
          `${type} ${id} is not stored here and there is no upstream to fetch it from`,
          "RepoNotFound",
        );
      }
      throw error;
    }
    return new HfError(404, `${type} ${id} has no revision ${revision} stored here`, "RevisionNotFound");
  }

  /** The stored revision, or undefined when the registry does not have it. */
  private async fromRegistry(type: HfType, id: string, revision: string): Promise<Pinned | undefined> {
    if (COMMIT.test(revision)) {
      const hit = this.pinned.get(`${type}/${id}@${revision}`);
      if (hit) return hit;
    }
    let manifest: Revision | undefined;
    try {
      manifest = (await this.deps.registry.getRevision({ repo: { kind: KIND[type], id }, revision })).revision;
    } catch (error) {
      if (error instanceof NearhubError && error.code === Code.NotFound) return undefined;
      throw error;
    }
    if (!manifest) return undefined;
    const hit = this.pinned.get(`${type}/${id}@${manifest.commit}`);
    if (hit) return hit;
    const files = new Map<string, FileEntry>();
    let info: Record<string, unknown> = {};
    for (const e of manifest.entries) {
      if (e.path === INFO_PATH) {
        info = JSON.parse((await this.readSmall(e.sha256, Number(e.size))).toString("utf8")) as Record<string, unknown>;
        continue;
      }
      files.set(e.path, fileEntry(e.path, e.sha256, Number(e.size), e.lfs, e.gitBlobSha1));
    }
    const lastModified = manifest.createdAt
      ? new Date(timestampMs(manifest.createdAt)).toISOString()
      : new Date(0).toISOString();
    return this.remember({
      type,
      id,
      commit: manifest.commit,
      files,
      dirs: treeOids(files.values()),
      info,
      lastModified,
    });
  }

  private remember(p: Pinned): Pinned {
    const key = `${p.type}/${p.id}@${p.commit}`;
    this.pinned.delete(key);
    this.pinned.set(key, p);
    while (this.pinned.size > PINNED_CACHE) this.pinned.delete(this.pinned.keys().next().value!);
    return p;
  }

  /**
   * Pins an upstream revision: reads its small files whole, stores them and publishes the
   * manifest. Storing is the mirror's own work (a pull-through for everyone), so its calls carry
   * the edge's identity, not the reader's, who may only read.
   */
  private pinFrom(type: HfType, id: string, info: UpstreamInfo): Promise<Pinned> {
    return asService(() => this.pinNow(type, id, info));
  }

  private async pinNow(type: HfType, id: string, info: UpstreamInfo): Promise<Pinned> {
    const upstream = this.deps.upstream!;
    try {
      const files = new Map<string, FileEntry>();
      const small: Array<{ path: string; size: number; blobId?: string }> = [];
      for (const s of info.siblings) {
        const path = checkFilePath(String(s.rfilename));
        if (path === INFO_PATH) continue;
        if (s.lfs) {
          if (!/^[0-9a-f]{64}$/.test(String(s.lfs.sha256)) || !Number.isSafeInteger(s.lfs.size) || s.lfs.size < 0) {
            throw new UpstreamUnavailable(`the upstream's LFS entry for ${path} has no valid sha256 and size`);
          }
          files.set(path, fileEntry(path, s.lfs.sha256, s.lfs.size, true, ""));
        } else if (s.size === 0) {
          files.set(path, fileEntry(path, EMPTY_SHA256, 0, false, gitBlobSha1(new Uint8Array())));
        } else {
          small.push({ path, size: Number(s.size ?? -1), ...(s.blobId ? { blobId: s.blobId } : {}) });
        }
      }
      let next = 0;
      const worker = async () => {
        while (next < small.length) {
          const f = small[next++]!;
          const res = await upstream.file(type, id, info.sha, f.path);
          const declared = Number(res.headers.get("content-length") ?? -1);
          if (declared > MAX_SMALL_FILE)
            throw new UpstreamUnavailable(`${f.path} is not in LFS but is ${declared} bytes`);
          const bytes = Buffer.from(await res.arrayBuffer());
          const oid = gitBlobSha1(bytes);
          if ((f.size >= 0 && bytes.byteLength !== f.size) || (f.blobId && oid !== f.blobId)) {
            throw new HfError(
              502,
              `the upstream's ${f.path} (${bytes.byteLength} bytes, git blob ${oid}) does not match its listing (${f.size} bytes, git blob ${f.blobId ?? "?"}); nothing was stored`,
            );
          }
          const sha256 = createHash("sha256").update(bytes).digest("hex");
          await this.storeBytes(sha256, bytes);
          files.set(f.path, fileEntry(f.path, sha256, bytes.byteLength, false, oid));
        }
      };
      await Promise.all(Array.from({ length: Math.min(SMALL_FILE_CONCURRENCY, small.length) }, worker));

      const { siblings: _siblings, sha: _sha, ...card } = info;
      const infoBytes = Buffer.from(JSON.stringify(card));
      const infoSha = createHash("sha256").update(infoBytes).digest("hex");
      await this.storeBytes(infoSha, infoBytes);
      const modified = Date.parse(String(info.lastModified ?? ""));
      const createdAt = Number.isFinite(modified) ? modified : Date.now();
      const entries = [...files.values()].map((f) => ({
        path: f.path,
        sha256: f.sha256,
        size: BigInt(f.size),
        gitBlobSha1: f.lfs ? "" : f.oid,
        lfs: f.lfs,
      }));
      entries.push({
        path: INFO_PATH,
        sha256: infoSha,
        size: BigInt(infoBytes.byteLength),
        gitBlobSha1: "",
        lfs: false,
      });
      try {
        await this.deps.registry.putRevision({
          repo: { kind: KIND[type], id },
          revision: {
            commit: info.sha,
            message: `mirrored from ${upstream.base}`,
            createdAt: timestampFromMs(createdAt),
            entries,
          },
          allowMissingBlobs: true,
        });
      } catch (error) {
        // Pinned meanwhile by another edge, with other card data: theirs stands.
        if (!(error instanceof NearhubError && error.code === Code.AlreadyExists)) throw error;
        const stored = await this.fromRegistry(type, id, info.sha);
        if (stored) return stored;
        throw error;
      }
      this.pins.inc({ outcome: "pinned" });
      this.log.info("pinned from upstream", { repo: `${type}/${id}`, commit: info.sha, files: files.size });
      return this.remember({
        type,
        id,
        commit: info.sha,
        files,
        dirs: treeOids(files.values()),
        info: card,
        lastModified: new Date(createdAt).toISOString(),
      });
    } catch (error) {
      this.pins.inc({ outcome: "failed" });
      throw error;
    }
  }

  private async storeBytes(sha256: string, bytes: Buffer): Promise<void> {
    await this.deps.storage.putBlob(
      (async function* () {
        yield { part: { case: "header" as const, value: { sha256, size: BigInt(bytes.byteLength) } } };
        for (let i = 0; i < bytes.byteLength; i += 1024 * 1024) {
          yield { part: { case: "chunk" as const, value: bytes.subarray(i, i + 1024 * 1024) } };
        }
        if (bytes.byteLength === 0) return;
      })(),
    );
    await this.deps.cache.putVerified(sha256, bytes);
  }

  /** A small blob read whole: from the hot cache, else from storage. */
  private async readSmall(sha256: string, size: number): Promise<Buffer> {
    const reader = await asService(() => this.deps.cache.open(sha256, size, async () => this.storageChunks(sha256)));
    const parts: Buffer[] = [];
    for await (const chunk of reader.stream(0, size - 1)) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  }

  private async *storageChunks(sha256: string): AsyncIterable<Uint8Array> {
    for await (const message of this.deps.storage.getBlob({ sha256 }, { timeoutMs: 6 * 3600_000 })) yield message.chunk;
  }

  /**
   * A reader of one file's bytes: the hot cache, else storage, else the upstream (streamed to
   * the client while it is written, verified, then committed to storage in the background).
   */
  async openFile(p: Pinned, entry: FileEntry): Promise<BlobReader> {
    // A fill (from storage or the upstream, then committed to storage) serves every later
    // reader, so it runs as the edge; whether this caller may read the repo is decided before.
    return asService(() => this.openNow(p, entry));
  }

  private openNow(p: Pinned, entry: FileEntry): Promise<BlobReader> {
    return this.deps.cache.open(
      entry.sha256,
      entry.size,
      async () => {
        let stored = false;
        try {
          stored = (await this.deps.storage.hasBlobs({ sha256: [entry.sha256] })).present.includes(entry.sha256);
        } catch (error) {
          this.log.warn("storage unreachable; asking the upstream", { error });
        }
        if (stored) return this.storageChunks(entry.sha256);
        const upstream = this.deps.upstream;
        if (!upstream) {
          throw new HfError(
            503,
            `${entry.path} of ${p.type} ${p.id}@${p.commit} is not stored here and there is no upstream`,
          );
        }
        const res = await upstream.file(p.type, p.id, p.commit, entry.path);
        if (!res.body) throw new UpstreamUnavailable(`the upstream sent no body for ${entry.path}`);
        return res.body;
      },
      (path) => this.commitToStorage(entry.sha256, entry.size, path),
    );
  }

  private commitToStorage(sha256: string, size: number, path: string): void {
    const work = (async () => {
      const fh = await open(path, "r");
      try {
        await this.deps.storage.putBlob(
          (async function* () {
            yield { part: { case: "header" as const, value: { sha256, size: BigInt(size) } } };
            const buffer = Buffer.allocUnsafe(1024 * 1024);
            for (let pos = 0; pos < size;) {
              const { bytesRead } = await fh.read(buffer, 0, buffer.byteLength, pos);
              if (bytesRead === 0) throw new Error(`the cached blob ${sha256} is shorter than ${size} bytes`);
              pos += bytesRead;
              yield { part: { case: "chunk" as const, value: Buffer.from(buffer.subarray(0, bytesRead)) } };
            }
          })(),
          { timeoutMs: 6 * 3600_000 },
        );
        this.stores.inc({ outcome: "stored" });
      } finally {
        await fh.close();
      }
    })()
      .catch((error: unknown) => {
        this.stores.inc({ outcome: "failed" });
        this.log.error("committing a pulled blob to storage failed; it stays in the hot cache only", { sha256, error });
      })
      .finally(() => this.uploads.delete(work));
    this.uploads.add(work);
  }

  /** Resolves when every background upload to storage has finished. */
  async idle(): Promise<void> {
    while (this.uploads.size > 0) await Promise.all([...this.uploads]);
  }

  /** Counts a download of a repo (the `downloads` field and a metric). */
  countDownload(type: HfType, id: string): void {
    const key = `${type}/${id}`;
    this.downloads.set(key, (this.downloads.get(key) ?? 0) + 1);
    this.downloadCount.inc({ type, repo: id });
  }

  downloadsOf(type: HfType, id: string): number {
    return this.downloads.get(`${type}/${id}`) ?? 0;
  }
}
