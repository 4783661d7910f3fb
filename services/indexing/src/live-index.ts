import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { Code, NearhubError } from "@nearhub/platform";
import type { DocumentKind } from "@nearhub/proto/search";
import type { IndexOp, IndexQuery, IndexSuggestion, SearchDocument, SearchIndex, SearchResult } from "./document.js";
import { SqliteSearchIndex } from "./sqlite-index.js";

/** How a backend keeps its indices: the active one, fresh ones for rebuilds, and the switch. */
export interface IndexBackend {
  /** The active index, creating it when absent; `fresh` when it must be filled from events. */
  open(): Promise<{ index: SearchIndex; fresh: boolean }>;
  /** A new, empty index beside the active one. */
  createNext(): Promise<SearchIndex>;
  /** Makes `next` the active index durably and drops the previous one; returns the index to read. */
  promote(next: SearchIndex): Promise<SearchIndex>;
  /** Drops an index that will not be promoted. */
  discard(next: SearchIndex): Promise<void>;
  close(): Promise<void>;
}

/**
 * SQLite files `<base>-<time>.sqlite` in the data folder and a pointer file `<base>.current`
 * naming the active one; the pointer is replaced with an atomic rename, so a crash leaves
 * either the old or the new index active, never none.
 */
export class SqliteBackend implements IndexBackend {
  private readonly pointer: string;

  constructor(
    private readonly dir: string,
    private readonly base: string,
  ) {
    this.pointer = join(dir, `${base}.current`);
  }

  private newPath(): string {
    return join(this.dir, `${this.base}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}.sqlite`);
  }

  private writePointer(path: string): void {
    const tmp = `${this.pointer}.tmp`;
    writeFileSync(tmp, basename(path));
    renameSync(tmp, this.pointer);
  }

  async open(): Promise<{ index: SearchIndex; fresh: boolean }> {
    const current = existsSync(this.pointer) ? readFileSync(this.pointer, "utf8").trim() : "";
    const path = current && existsSync(join(this.dir, current)) ? join(this.dir, current) : this.newPath();
    const index = new SqliteSearchIndex(path);
    if (!current || join(this.dir, current) !== path) this.writePointer(path);
    return { index, fresh: index.fresh };
  }

  async createNext(): Promise<SearchIndex> {
    return new SqliteSearchIndex(this.newPath());
  }

  async promote(next: SearchIndex): Promise<SearchIndex> {
    const previous = existsSync(this.pointer) ? readFileSync(this.pointer, "utf8").trim() : "";
    this.writePointer(next.name);
    if (previous && previous !== basename(next.name)) this.removeFiles(join(this.dir, previous));
    return next;
  }

  async discard(next: SearchIndex): Promise<void> {
    await next.close();
    this.removeFiles(next.name);
  }

  private removeFiles(path: string): void {
    for (const suffix of ["", "-wal", "-shm"]) rmSync(`${path}${suffix}`, { force: true });
  }

  async close(): Promise<void> {}
}

/** Progress of a rebuild. */
export interface RebuildProgress {
  eventsReplayed: number;
  eventsTotal: number;
  documents: number;
  done: boolean;
  indexName: string;
  durationMs: number;
}

/** Replays every event into `target`, reporting progress; resolves when caught up. */
export type Replay = (
  target: SearchIndex,
  progress: (replayed: number, total: number) => void,
  signal: AbortSignal,
) => Promise<void>;

/**
 * The index the service reads and writes. During a rebuild, writes go to the active index
 * and to the one being built (versions make the double write and the replay converge), reads
 * stay on the active index, and the switch happens only once the new index is complete: no
 * moment of empty results.
 */
export class LiveIndex implements SearchIndex {
  private building: SearchIndex | undefined;
  private rebuilding = false;

  private constructor(
    private readonly backend: IndexBackend,
    private active: SearchIndex,
  ) {}

  /** Opens the backend's active index; when `fresh`, fill it with {@link fill}. */
  static async open(backend: IndexBackend): Promise<LiveIndex> {
    const { index, fresh } = await backend.open();
    const live = new LiveIndex(backend, index);
    live.fresh = fresh;
    return live;
  }

  /** True when the active index was created empty (or from an outdated layout) at open. */
  fresh = false;

  /** Replays every event into the active index (a fresh one); live writes go on meanwhile. */
  async fill(replay: Replay, signal: AbortSignal): Promise<void> {
    await replay(this.active, () => undefined, signal);
    this.fresh = false;
  }

  get name(): string {
    return this.active.name;
  }

  async apply(ops: IndexOp[]): Promise<boolean[]> {
    const building = this.building;
    const [applied] = await Promise.all([this.active.apply(ops), building?.apply(ops)]);
    return applied;
  }

  search(query: IndexQuery): Promise<SearchResult> {
    return this.active.search(query);
  }

  suggest(prefix: string, kind: DocumentKind, limit: number): Promise<IndexSuggestion[]> {
    return this.active.suggest(prefix, kind, limit);
  }

  get(id: string): Promise<SearchDocument | undefined> {
    return this.active.get(id);
  }

  count(): Promise<number> {
    return this.active.count();
  }

  /**
   * Builds a new index from `replay` while this one keeps serving, then switches to it.
   * One rebuild at a time.
   */
  async *rebuild(replay: Replay, signal: AbortSignal): AsyncGenerator<RebuildProgress> {
    if (this.rebuilding) {
      throw new NearhubError(Code.FailedPrecondition, "an index rebuild is already running; wait for it to finish");
    }
    this.rebuilding = true;
    const started = Date.now();
    let next: SearchIndex | undefined;
    try {
      const target = await this.backend.createNext();
      next = target;
      // Live events reach the new index from now on; the replay covers everything before.
      this.building = target;
      const counts = { replayed: 0, total: 0 };
      const pending: RebuildProgress[] = [];
      let wake = () => {};
      const progress = (replayed: number, total: number) => {
        counts.replayed = replayed;
        counts.total = total;
        pending.push({
          eventsReplayed: replayed,
          eventsTotal: total,
          documents: 0,
          done: false,
          indexName: target.name,
          durationMs: Date.now() - started,
        });
        wake();
      };
      let settled = false;
      const run = replay(target, progress, signal).finally(() => {
        settled = true;
        wake();
      });
      // Keep the rejection for the await below, not as an unhandled one meanwhile.
      run.catch(() => undefined);
      while (!settled || pending.length > 0) {
        const update = pending.shift();
        if (update) yield update;
        else await new Promise<void>((resolve) => (wake = resolve));
      }
      await run;
      const previous = this.active;
      this.active = await this.backend.promote(target);
      next = undefined;
      this.building = undefined;
      if (previous !== this.active) await previous.close();
      yield {
        eventsReplayed: counts.replayed,
        eventsTotal: counts.total,
        documents: await this.active.count(),
        done: true,
        indexName: target.name,
        durationMs: Date.now() - started,
      };
    } finally {
      this.building = undefined;
      this.rebuilding = false;
      if (next) await this.backend.discard(next).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    await this.active.close();
    await this.backend.close();
  }
}
