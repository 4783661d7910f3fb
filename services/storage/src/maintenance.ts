import { createHash, randomInt } from "node:crypto";
import type { Bus, Logger } from "@nearhub/platform";
import { blobCorrupt } from "@nearhub/proto/events";
import { Counter, Gauge, type Registry as PromRegistry } from "prom-client";
import type { BlobStat, BlobStore } from "./blob-store.js";
import type { Registry } from "./registry.js";
import type { UploadSessions } from "./upload-sessions.js";

/** How many blobs garbage collection removes concurrently on the folder backend. */
const REMOVALS_AT_ONCE = 64;

/** A backend that reclaims removed blobs' space after a sweep (the folder backend). */
function compactable(store: BlobStore): store is BlobStore & { compact(): Promise<number> } {
  return typeof (store as { compact?: unknown }).compact === "function";
}

/** Options of {@link Maintenance}. */
export interface MaintenanceOptions {
  /** A blob younger than this is never collected: its revision may not be published yet. */
  graceMs: number;
  logger: Logger;
  registry?: PromRegistry;
}

/**
 * Garbage collection and scrubbing of the blob store.
 *
 * GC is mark-and-sweep: mark every blob a revision references (manifests and their entries)
 * and every blob an open upload session is for; sweep stored blobs that are unmarked and
 * older than the grace period. Candidates are marked a second time right before deletion, so
 * a revision published during the first pass keeps its blobs. Uploads in flight are safe:
 * their bytes live outside `sha256/` until they commit, and a freshly committed blob is
 * younger than the grace period.
 *
 * Scrub re-hashes a random sample of blobs; a blob whose bytes do not hash to its name is
 * reported (event `storage.blob.corrupt`, metric, error log) and left for an operator.
 */
export class Maintenance {
  readonly removed: Counter;
  readonly removedBytes: Counter;
  readonly scrubbed: Counter<"result">;
  readonly lastGc: Gauge;

  constructor(
    private readonly store: BlobStore,
    private readonly registry: Registry,
    private readonly sessions: UploadSessions,
    private readonly bus: Bus,
    private readonly options: MaintenanceOptions,
  ) {
    const registers = options.registry ? [options.registry] : [];
    this.removed = new Counter({
      name: "nearhub_storage_gc_removed_blobs_total",
      help: "Blobs removed by garbage collection",
      registers,
    });
    this.removedBytes = new Counter({
      name: "nearhub_storage_gc_removed_bytes_total",
      help: "Bytes removed by garbage collection",
      registers,
    });
    this.scrubbed = new Counter({
      name: "nearhub_storage_scrub_blobs_total",
      help: "Blobs re-hashed by the scrub job, by result (ok, corrupt)",
      labelNames: ["result"],
      registers,
    });
    for (const result of ["ok", "corrupt"]) this.scrubbed.inc({ result }, 0);
    this.lastGc = new Gauge({
      name: "nearhub_storage_gc_last_run_timestamp_seconds",
      help: "When garbage collection last completed",
      registers,
    });
  }

  private async mark(): Promise<Set<string>> {
    const live = new Set<string>(await this.sessions.openShas());
    for await (const revision of this.registry.allRevisions()) {
      live.add(revision.manifestSha256);
      try {
        const manifest = await this.registry.manifest(revision);
        for (const entry of manifest.entries) live.add(entry.sha256);
      } catch (error) {
        // Without the manifest the revision's blobs are unknown: collect nothing this time.
        throw new Error(`cannot read the manifest ${revision.manifestSha256} of revision ${revision.commit}`, {
          cause: error,
        });
      }
    }
    return live;
  }

  /** One mark-and-sweep pass. */
  async collect(now = Date.now()): Promise<{ scanned: number; removed: number; bytes: number }> {
    const first = await this.mark();
    const candidates: BlobStat[] = [];
    let scanned = 0;
    for await (const blob of this.store.list()) {
      scanned++;
      if (!first.has(blob.sha256) && now - blob.modifiedAt >= this.options.graceMs) candidates.push(blob);
    }
    let removed = 0;
    let bytes = 0;
    if (candidates.length > 0) {
      const second = await this.mark();
      const doomed = candidates.filter((blob) => !second.has(blob.sha256));
      // The folder backend writes packed blobs' tombstones together (one fdatasync for a group
      // of removals): remove a few at a time there; elsewhere one by one, as before.
      const atOnce = compactable(this.store) ? REMOVALS_AT_ONCE : 1;
      for (let i = 0; i < doomed.length; i += atOnce) {
        await Promise.all(
          doomed.slice(i, i + atOnce).map(async (blob) => {
            if (!(await this.store.remove(blob.sha256))) return;
            removed++;
            bytes += blob.size;
            this.removed.inc();
            this.removedBytes.inc(blob.size);
          }),
        );
      }
    }
    // The folder backend reclaims removed small blobs' space by rewriting their packs.
    if (removed > 0 && compactable(this.store)) await this.store.compact();
    this.lastGc.set(Date.now() / 1000);
    this.options.logger.info("garbage collection done", { scanned, removed, bytes });
    return { scanned, removed, bytes };
  }

  /** Re-hashes up to `sample` randomly chosen blobs; returns the corrupt ones. */
  async scrub(sample: number): Promise<{ checked: number; corrupt: string[] }> {
    // Reservoir sampling: one pass over the listing, `sample` blobs kept, uniformly.
    const chosen: BlobStat[] = [];
    let seen = 0;
    for await (const blob of this.store.list()) {
      seen++;
      if (chosen.length < sample) chosen.push(blob);
      else {
        const j = randomInt(seen);
        if (j < sample) chosen[j] = blob;
      }
    }
    const corrupt: string[] = [];
    for (const blob of chosen) {
      const hash = createHash("sha256");
      let size = 0;
      try {
        for await (const chunk of this.store.get(blob.sha256, 0, undefined, { fromDisk: true })) {
          hash.update(chunk);
          size += chunk.byteLength;
        }
      } catch (error) {
        // Removed between listing and reading (GC, another replica): not corruption.
        this.options.logger.debug("scrub could not read a blob", { sha256: blob.sha256, error });
        continue;
      }
      const actual = hash.digest("hex");
      if (actual === blob.sha256) {
        this.scrubbed.inc({ result: "ok" });
        continue;
      }
      this.scrubbed.inc({ result: "corrupt" });
      corrupt.push(blob.sha256);
      this.options.logger.error("scrub found a corrupt blob: its bytes do not hash to its name", {
        sha256: blob.sha256,
        actual_sha256: actual,
        size,
      });
      await this.bus.publishEvent(
        blobCorrupt,
        { blob: { sha256: blob.sha256, size: BigInt(blob.size) }, actualSha256: actual, actualSize: BigInt(size) },
        { id: `blob.corrupt:${blob.sha256}:${actual}` },
      );
    }
    return { checked: chosen.length, corrupt };
  }
}
