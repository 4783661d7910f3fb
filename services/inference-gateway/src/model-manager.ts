import { Code, NearhubError, type Logger } from "@nearhub/platform";
import { BatchScheduler } from "./batch-scheduler.js";
import { resolveModelConfig, type ModelConfig, type ResolvedModelConfig } from "./model-config.js";
import { checkModelName, checkModelVersion, type ModelListing, type ModelSource } from "./model-source.js";
import { ModelStats, recordExecution, type InferenceMetrics } from "./model-statistics.js";
import { OnnxBackend, type ExecutionBackend, type GraphSignature } from "./onnx-backend.js";
import { LAZY_LOAD_REASON } from "./remote-backends.js";

/** Triton's model states, as RepositoryIndex reports them. */
export type ModelState = "READY" | "LOADING" | "UNLOADING" | "UNAVAILABLE";

/** A model version that is loaded and serving. */
export interface LoadedModel {
  readonly name: string;
  readonly version: string;
  readonly config: ResolvedModelConfig;
  readonly scheduler: BatchScheduler;
  readonly stats: ModelStats;
  /** Estimated bytes held (model file × instances). */
  readonly memoryBytes: number;
}

/** Creates the execution backend of a model (ONNX Runtime unless a test injects another). */
export type BackendFactory = (
  bytes: Uint8Array,
  config: ModelConfig,
) => Promise<{ backend: ExecutionBackend; signature: GraphSignature }>;

/** What the manager reports about loads and unloads (logs, events). */
export type ModelEvent =
  | { type: "loaded"; name: string; version: string; loadMs: number; memoryBytes: number }
  | { type: "unloaded"; name: string; version: string; reason: "request" | "memory_budget" | "shutdown" }
  | { type: "failed"; name: string; version: string; error: NearhubError };

/** Options of {@link ModelManager}. */
export interface ModelManagerOptions {
  source: ModelSource;
  /** Estimated bytes all loaded models may hold; idle models are unloaded LRU-first to fit. */
  memoryBudgetBytes: number;
  metrics: InferenceMetrics;
  logger: Logger;
  createBackend?: BackendFactory;
  onEvent?: (event: ModelEvent) => void;
}

interface Loaded extends LoadedModel {
  backend: ExecutionBackend;
  holds: number;
  lastUsed: number;
  released: Array<() => void>;
}

interface Entry {
  name: string;
  version: string;
  state: ModelState;
  reason: string;
  loading?: Promise<Loaded>;
  loaded?: Loaded;
}

const ortFactory: BackendFactory = (bytes, config) =>
  OnnxBackend.load(bytes, { instances: config.instances, intraOpThreads: config.intra_op_threads });

/**
 * The models this gateway serves: resolved from the source, loaded lazily on first request or
 * on RepositoryModelLoad, unloaded on request or when the memory budget needs room (least
 * recently used first, never a model with requests in flight), with cumulative statistics.
 */
export class ModelManager {
  private readonly entries = new Map<string, Entry>();
  /** Entries being unloaded: out of `entries` so new requests load afresh, still holding memory. */
  private readonly unloading = new Set<Entry>();
  private readonly stats = new Map<string, ModelStats>();
  private listing: ModelListing[] = [];
  private listedAt = 0;
  private listingNow: Promise<ModelListing[]> | undefined;
  private readonly createBackend: BackendFactory;
  private closed = false;

  constructor(private readonly options: ModelManagerOptions) {
    this.createBackend = options.createBackend ?? ortFactory;
  }

  /**
   * The source's models, cached for a second so hot paths do not list the folder or the
   * registry; concurrent callers share one listing, and when the source cannot be listed
   * (storage down) the last listing keeps serving, so loaded models keep answering.
   */
  async list(refresh = false): Promise<ModelListing[]> {
    if (!refresh && Date.now() - this.listedAt <= 1000) return this.listing;
    this.listingNow ??= this.options.source
      .list()
      .then(
        (listing) => {
          this.listing = listing;
          this.listedAt = Date.now();
          return listing;
        },
        (error: unknown) => {
          if (this.listedAt === 0) throw error;
          this.options.logger.warn("model source cannot be listed; serving the last listing", {
            error: NearhubError.from(error).rawMessage,
          });
          return this.listing;
        },
      )
      .finally(() => (this.listingNow = undefined));
    return this.listingNow;
  }

  /** Every model version the source holds, with its state (RepositoryIndex). */
  async index(
    readyOnly: boolean,
  ): Promise<Array<{ name: string; version: string; state: ModelState; reason: string }>> {
    const rows: Array<{ name: string; version: string; state: ModelState; reason: string }> = [];
    for (const model of await this.list(true)) {
      for (const version of model.versions) {
        const entry =
          this.entries.get(key(model.name, version)) ??
          [...this.unloading].find((e) => e.name === model.name && e.version === version);
        const state = entry?.state ?? "UNAVAILABLE";
        if (readyOnly && state !== "READY") continue;
        rows.push({ name: model.name, version, state, reason: entry?.reason ?? LAZY_LOAD_REASON });
      }
    }
    return rows;
  }

  /** The version a request means: the given one if the source has it, else the newest. */
  async resolveVersion(name: string, version: string): Promise<string> {
    checkModelName(name);
    checkModelVersion(version);
    const find = (list: ModelListing[]) => list.find((m) => m.name === name);
    let model = find(await this.list());
    if (!model || (version && !model.versions.includes(version))) model = find(await this.list(true));
    if (!model) {
      throw new NearhubError(
        Code.NotFound,
        `model ${name} is not in the repository; register it with: nearhub model serve ./model.onnx --name ${name}`,
      );
    }
    if (!version) return model.versions[model.versions.length - 1] as string;
    if (!model.versions.includes(version)) {
      throw new NearhubError(
        Code.NotFound,
        `model ${name} has no version ${version} (it has ${model.versions.join(", ")})`,
      );
    }
    return version;
  }

  /** The state of one version, without loading it. */
  state(name: string, version: string): ModelState {
    return this.entries.get(key(name, version))?.state ?? "UNAVAILABLE";
  }

  /** The loaded model if it is loaded (no lazy load). */
  peek(name: string, version: string): LoadedModel | undefined {
    return this.entries.get(key(name, version))?.loaded;
  }

  /** Cumulative statistics of every version that served, or of one model. */
  statistics(
    name?: string,
    version?: string,
  ): Array<{ name: string; version: string; stats: ModelStats; memoryBytes: number }> {
    const out = [];
    for (const [k, stats] of this.stats) {
      const [n, v] = k.split("/") as [string, string];
      if (name && n !== name) continue;
      if (version && v !== version) continue;
      out.push({ name: n, version: v, stats, memoryBytes: this.entries.get(k)?.loaded?.memoryBytes ?? 0 });
    }
    return out;
  }

  /**
   * Runs `fn` with the model loaded (loading it first if needed); the model cannot be unloaded
   * while `fn` runs.
   */
  /**
   * The loaded model a request names, held (as {@link use} holds it) when it is ready now;
   * undefined when it needs resolving or loading (then call {@link use}). Pair with {@link release}.
   */
  tryHold(name: string, version: string): LoadedModel | undefined {
    const model = this.loadedNow(name, version);
    if (!model) return undefined;
    model.holds++;
    model.lastUsed = performance.now();
    return model;
  }

  /** Ends a hold taken by {@link tryHold}. */
  release(held: LoadedModel): void {
    const model = held as Loaded;
    model.holds--;
    if (model.holds === 0) for (const r of model.released.splice(0)) r();
  }

  async use<T>(name: string, version: string, fn: (model: LoadedModel) => Promise<T>): Promise<T> {
    const model = this.loadedNow(name, version) ?? (await this.load(name, await this.resolveVersion(name, version)));
    model.holds++;
    model.lastUsed = performance.now();
    try {
      return await fn(model);
    } finally {
      model.holds--;
      if (model.holds === 0) for (const r of model.released.splice(0)) r();
    }
  }

  /**
   * The loaded model a request names, found without waiting when the listing holds it and the
   * version is loaded (the path of nearly every request); undefined sends the caller the long way.
   */
  private loadedNow(name: string, version: string): Loaded | undefined {
    if (this.closed || this.listedAt === 0) return undefined;
    // A stale listing is refreshed in the background rather than awaited: a model that is
    // loaded keeps answering without a pause every second (one refresh at a time).
    if (Date.now() - this.listedAt > 1000) void this.list().catch(() => undefined);
    checkModelName(name);
    checkModelVersion(version);
    let listed: ModelListing | undefined;
    for (const m of this.listing) if (m.name === name) listed = m;
    if (!listed) return undefined;
    const resolved = version || listed.versions[listed.versions.length - 1];
    if (resolved === undefined || (version && !listed.versions.includes(version))) return undefined;
    return this.entries.get(key(name, resolved))?.loaded;
  }

  /** Loads a version (or returns it if loaded); concurrent callers share one load. */
  async load(name: string, version: string): Promise<Loaded> {
    if (this.closed) throw new NearhubError(Code.Unavailable, "the gateway is shutting down");
    const k = key(name, version);
    const entry = this.entries.get(k);
    if (entry?.loaded) return entry.loaded;
    if (entry?.loading) return entry.loading;
    const fresh: Entry = { name, version, state: "LOADING", reason: "loading" };
    this.entries.set(k, fresh);
    fresh.loading = this.doLoad(fresh).then(
      (loaded) => {
        fresh.loaded = loaded;
        fresh.state = "READY";
        fresh.reason = "";
        delete fresh.loading;
        return loaded;
      },
      (error: unknown) => {
        const e = NearhubError.from(error, Code.Internal);
        if (this.entries.get(k) === fresh) this.entries.delete(k);
        this.options.metrics.loads.inc({ model: name, result: "failed" });
        this.options.onEvent?.({ type: "failed", name, version, error: e });
        throw e;
      },
    );
    return fresh.loading;
  }

  private async doLoad(entry: Entry): Promise<Loaded> {
    const { name, version } = entry;
    const started = performance.now();
    const fetched = await this.options.source.fetch(name, version);
    const memoryBytes = fetched.bytes.byteLength * fetched.config.instances;
    await this.makeRoom(memoryBytes, name);
    const { backend, signature } = await this.createBackend(fetched.bytes, fetched.config);
    let config: ResolvedModelConfig;
    try {
      config = resolveModelConfig(fetched.config, signature, fetched.where);
    } catch (error) {
      await backend.close();
      throw error;
    }
    const k = key(name, version);
    let stats = this.stats.get(k);
    if (!stats) this.stats.set(k, (stats = new ModelStats()));
    const labels = { model: name, version };
    const { metrics } = this.options;
    const counters = metrics.counters(name, version);
    const modelStats = stats;
    const scheduler = new BatchScheduler(
      backend,
      {
        maxBatchSize: config.max_batch_size,
        dynamicBatching: config.dynamic_batching !== undefined,
        preferredBatchSizes: config.dynamic_batching?.preferred_batch_size ?? [],
        maxQueueDelayMicros: config.dynamic_batching?.max_queue_delay_microseconds ?? 0,
        maxQueueSize: config.max_queue_size,
        outputs: config.outputs.map((o) => o.name),
        label: `model ${name} version ${version}`,
      },
      (report) => {
        recordExecution(modelStats, report.batchSize, report.computeMs);
        counters.executions++;
        counters.computeUs += Math.round(report.computeMs * 1000);
        metrics.batchSize.observe(labels, report.batchSize);
      },
      (reason) => metrics.dropped.inc({ model: name, reason }),
    );
    const loadMs = performance.now() - started;
    metrics.loads.inc({ model: name, result: "ok" });
    metrics.loadSeconds.observe({ model: name }, loadMs / 1000);
    this.options.onEvent?.({ type: "loaded", name, version, loadMs, memoryBytes });
    const loaded: Loaded = {
      name,
      version,
      config,
      scheduler,
      stats: modelStats,
      memoryBytes,
      backend,
      holds: 0,
      lastUsed: performance.now(),
      released: [],
    };
    this.updateMemory(memoryBytes);
    return loaded;
  }

  private usedBytes(): number {
    let used = 0;
    for (const e of this.entries.values()) used += e.loaded?.memoryBytes ?? 0;
    for (const e of this.unloading) used += e.loaded?.memoryBytes ?? 0;
    return used;
  }

  private updateMemory(extra = 0): void {
    this.options.metrics.memoryBytes.set(this.usedBytes() + extra);
  }

  /** Unloads idle models, least recently used first, until `bytes` more fit the budget. */
  private async makeRoom(bytes: number, forName: string): Promise<void> {
    const budget = this.options.memoryBudgetBytes;
    if (bytes > budget) {
      throw new NearhubError(
        Code.ResourceExhausted,
        `model ${forName} needs about ${mib(bytes)} MiB, more than the whole memory budget of ${mib(budget)} MiB; raise NEARHUB_INFERENCE_MEMORY_BUDGET_MB or lower its instances`,
      );
    }
    while (this.usedBytes() + bytes > budget) {
      const idle = [...this.entries.values()]
        .filter((e) => e.loaded && e.state === "READY" && e.loaded.holds === 0 && e.loaded.scheduler.pending === 0)
        .sort((a, b) => (a.loaded as Loaded).lastUsed - (b.loaded as Loaded).lastUsed)[0];
      if (!idle) {
        throw new NearhubError(
          Code.ResourceExhausted,
          `model ${forName} needs about ${mib(bytes)} MiB but the ${mib(budget)} MiB memory budget is held by models serving requests; retry when they finish or raise NEARHUB_INFERENCE_MEMORY_BUDGET_MB`,
        );
      }
      await this.unloadEntry(idle, "memory_budget");
    }
  }

  /** Unloads a model (every loaded version, or one); waits for its requests in flight. */
  async unload(name: string, version = ""): Promise<number> {
    checkModelName(name);
    checkModelVersion(version);
    const targets = [...this.entries.values()].filter((e) => e.name === name && (!version || e.version === version));
    await Promise.all(targets.map((e) => this.unloadEntry(e, "request")));
    return targets.length;
  }

  private async unloadEntry(entry: Entry, reason: "request" | "memory_budget" | "shutdown"): Promise<void> {
    const loaded = entry.loaded ?? (await entry.loading?.catch(() => undefined));
    if (!loaded || entry.state === "UNLOADING") return;
    entry.state = "UNLOADING";
    entry.reason = "waiting for requests in flight";
    const k = key(entry.name, entry.version);
    if (this.entries.get(k) === entry) this.entries.delete(k);
    this.unloading.add(entry);
    try {
      // Requests already holding the model finish on it; new ones load a fresh copy.
      if (loaded.holds > 0) await new Promise<void>((resolve) => loaded.released.push(resolve));
      loaded.scheduler.close();
      await loaded.scheduler.idle();
      await loaded.backend.close();
    } finally {
      this.unloading.delete(entry);
      entry.state = "UNAVAILABLE";
      entry.reason = "unloaded";
    }
    this.updateMemory();
    this.options.metrics.unloads.inc({ model: entry.name, reason });
    this.options.onEvent?.({ type: "unloaded", name: entry.name, version: entry.version, reason });
  }

  /** Unloads everything (shutdown): waits for requests in flight, then frees the instances. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.entries.values()].map((e) => this.unloadEntry(e, "shutdown")));
    await Promise.all([...this.unloading].map((e) => e.loaded?.backend.close() ?? Promise.resolve()));
  }
}

function key(name: string, version: string): string {
  return `${name}/${version}`;
}

function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}
