/**
 * Search on the embedded backend (SQLite FTS5): indexing throughput through the backend's
 * bulk path, query latency at the gRPC boundary (the server in a process of its own,
 * bench/search-server.ts, as deployed; its garbage collections reported) for a mix of term,
 * prefix, filtered and sorted queries next to the same queries in-process (the difference is
 * the gRPC cost), a brute-force LIKE scan of the same table as the baseline ratio, and event →
 * searchable latency through NATS and the indexing service, on the same index, when a NATS
 * server answers.
 *
 * BENCH_SEARCH_DOCS (default 20000; the issue's scale is 1000000) documents,
 * BENCH_QUERIES (default 200) per query kind, BENCH_SCANS (default 20, 5 from 200,000
 * documents: one scan reads every row) brute-force samples, BENCH_EVENTS (default 100) events;
 * BENCH_SEARCH_FILE=path keeps the index there, and a later run with it skips indexing.
 * Loopback only.
 */
import { mkdirSync, readFileSync, realpathSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  Bus,
  Names,
  createClient,
  type CallContext,
  parseEnv,
  silentLogger,
  type ServiceHost,
} from "@nearhub/platform";
import { mirrorAdded } from "@nearhub/proto/events";
import {
  DocumentKind,
  SearchRequestSchema,
  SearchService,
  SortField,
  SuggestRequestSchema,
} from "@nearhub/proto/search";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Metadata } from "@grpc/grpc-js";
import { adminAuth, deleteNamespace, serviceEnv } from "@nearhub/testing";
import {
  SqliteSearchIndex,
  indexingEnv,
  newDocument,
  newQuery,
  searchApi,
  startIndexing,
  type SearchDocument,
} from "@nearhub/indexing";
import { BenchChild } from "./bench-child.js";
import { percentile, time, type Figures } from "./query-timing.js";
import type { SearchClientMessage, SearchClientRequest } from "./search-client.js";
import type { GcFigures, SearchServerMessage, SearchServerRequest } from "./search-server.js";

const DOCS = Number(process.env["BENCH_SEARCH_DOCS"] ?? process.env["BENCH_DOCS"] ?? 20_000);
const QUERIES = Number(process.env["BENCH_QUERIES"] ?? 200);
const SCANS = Number(process.env["BENCH_SCANS"] ?? (DOCS >= 200_000 ? 5 : 20));
const EVENTS = Number(process.env["BENCH_EVENTS"] ?? 100);
const KEEP = process.env["BENCH_SEARCH_FILE"];
/** Documents per transaction of the bulk load (a rebuild writes the same way). */
const BATCH = 5000;

// A small deterministic generator, so every run indexes the same corpus.
// mulberry32 in 32-bit integer arithmetic (an LCG in doubles loses precision and cycles
// after ~10,000 documents, which would make a million of them a few thousand repeated).
let seed = 42;
function rand(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
}
const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)] as T;

const AUTHORS = [
  "google",
  "meta-llama",
  "mistralai",
  "Qwen",
  "microsoft",
  "openai-community",
  "sentence-transformers",
  "stabilityai",
  "bigscience",
  "EleutherAI",
  "tiiuae",
  "deepseek-ai",
  "nvidia",
  "facebook",
  "BAAI",
  "intfloat",
  "THUDM",
  "01-ai",
  "allenai",
  "huggingface",
] as const;
const FAMILIES = [
  "bert",
  "roberta",
  "llama",
  "mistral",
  "qwen",
  "gpt2",
  "t5",
  "whisper",
  "clip",
  "vit",
  "bloom",
  "falcon",
  "phi",
  "gemma",
  "deberta",
  "electra",
  "bge",
  "e5",
  "stable-diffusion",
  "yi",
  "chatglm",
  "通义千问",
] as const;
const SIZES = ["tiny", "small", "base", "large", "xl", "7b", "13b", "70b", "1.5b", "350m"] as const;
const SUFFIXES = [
  "",
  "-instruct",
  "-chat",
  "-uncased",
  "-cased",
  "-v2",
  "-v1.5",
  "-gguf",
  "-onnx",
  "-finetuned",
] as const;
const PIPELINES = [
  "text-generation",
  "fill-mask",
  "text-classification",
  "feature-extraction",
  "sentence-similarity",
  "automatic-speech-recognition",
  "image-classification",
  "text-to-image",
  "translation",
  "summarization",
] as const;
const LIBRARIES = ["transformers", "sentence-transformers", "diffusers", "onnx", "gguf", "timm", "peft"] as const;
const LICENSES = ["apache-2.0", "mit", "llama3", "cc-by-4.0", "openrail", "other"] as const;
const LANGS = ["en", "zh", "fr", "de", "multilingual", "ja", "es"] as const;
const WORDS = [
  "model",
  "trained",
  "dataset",
  "language",
  "tokens",
  "fine-tuned",
  "benchmark",
  "accuracy",
  "inference",
  "quantized",
  "weights",
  "license",
  "context",
  "attention",
  "layers",
  "parameters",
  "evaluation",
  "instruction",
  "safety",
  "multilingual",
  "vision",
  "speech",
  "embedding",
  "retrieval",
  "reasoning",
  "code",
  "math",
  "chat",
  "pretraining",
  "corpus",
  "downstream",
  "tasks",
  "transformer",
  "architecture",
  "checkpoint",
  "precision",
] as const;

/** Card text vocabulary: the words above first, then rarer ones, drawn Zipf-like. */
const VOCABULARY = [...WORDS, ...Array.from({ length: 4000 }, (_, i) => `term${i.toString(36)}`)];
const zipfWord = (): string => VOCABULARY[Math.floor(VOCABULARY.length ** rand()) - 1] ?? "model";

export function syntheticDocument(i: number): SearchDocument {
  const author = pick(AUTHORS);
  const family = pick(FAMILIES);
  const name = `${family}-${pick(SIZES)}${pick(SUFFIXES)}-${i}`;
  const library = pick(LIBRARIES);
  const pipeline = pick(PIPELINES);
  const card = Array.from({ length: 60 }, zipfWord).join(" ");
  return newDocument({
    id: `${author}/${name}`,
    kind: rand() < 0.9 ? DocumentKind.MODEL : DocumentKind.DATASET,
    version: 1n,
    author,
    tags: [library, pipeline, pick(LANGS), `license:${pick(LICENSES)}`],
    pipelineTag: pipeline,
    libraryName: library,
    license: pick(LICENSES),
    downloads: Math.floor(rand() ** 4 * 10_000_000),
    likes: Math.floor(rand() ** 4 * 5000),
    description: `${family} ${name} by ${author}`,
    body: `# ${name}\n\n${card}`,
    files: [
      { path: "config.json", size: 600 },
      { path: library === "gguf" ? `${name}.Q4_K_M.gguf` : "model.safetensors", size: Math.floor(rand() * 1e10) },
    ],
    createdAtMs: Date.UTC(2024, 0, 1) + Math.floor(rand() * 7e10),
    updatedAtMs: Date.UTC(2025, 0, 1) + Math.floor(rand() * 3e10),
  });
}

const ms = (us: number) => (us / 1000).toFixed(2).padStart(7);
/** `cpu` names whose CPU the figures count: the client's alone for gRPC calls (the server is another process). */
const fmt = (f: Figures, cpu = "CPU") =>
  `median ${ms(f.median)} ms   p99 ${ms(f.p99)} ms   ${f.qps.toFixed(0).padStart(6)} q/s   (${cpu} median ${ms(f.cpuMedian)} ms, p99 ${ms(f.cpuP99)} ms)`;

type Request = MessageInitShape<typeof SearchRequestSchema>;

/** The query mix: what people type in a model search box. */
function queryMix(): Record<string, Request[]> {
  const n = QUERIES;
  return {
    term: Array.from({ length: n }, () => ({ query: pick(FAMILIES) })),
    prefix: Array.from({ length: n }, () => ({ query: pick(FAMILIES).slice(0, 3) })),
    "two words": Array.from({ length: n }, () => ({ query: `${pick(FAMILIES)} ${pick(WORDS)}` })),
    "card text word": Array.from({ length: n }, () => ({ query: zipfWord() })),
    filtered: Array.from({ length: n }, () => ({
      query: pick(FAMILIES),
      kind: DocumentKind.MODEL,
      filters: { author: pick(AUTHORS), pipelineTag: pick(PIPELINES) },
    })),
    "sorted, no text": Array.from({ length: n }, () => ({
      kind: DocumentKind.MODEL,
      sort: SortField.DOWNLOADS,
      filters: { tags: [pick(LIBRARIES)] },
    })),
    "text + sort": Array.from({ length: n }, () => ({ query: pick(FAMILIES), sort: SortField.UPDATED })),
    // Names sort by their first letters, which an author's documents share.
    "text + name": Array.from({ length: n }, () => ({ query: pick(FAMILIES), sort: SortField.NAME })),
    "author + name": Array.from({ length: n }, () => ({
      kind: DocumentKind.MODEL,
      sort: SortField.NAME,
      filters: { author: pick(AUTHORS) },
    })),
  };
}

async function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ host, port });
    socket.setTimeout(500, () => (socket.destroy(), resolve(false)));
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
  });
}

/**
 * Event → searchable through NATS and the real indexing service, serving the benchmark's own
 * index file (so at BENCH_SEARCH_DOCS documents), when NATS answers.
 */
async function eventToSearchable(serviceDir: string, namespace: string): Promise<void> {
  const natsUrl = process.env["NATS_URL"] ?? "nats://127.0.0.1:4222";
  const url = new URL(natsUrl.replace(/^nats:/, "http:"));
  if (!(await reachable(url.hostname, Number(url.port || 4222)))) {
    console.log(`  event → searchable: skipped (no NATS at ${natsUrl}; set NATS_URL)`);
    return;
  }
  const env = serviceEnv(natsUrl, namespace, serviceDir);
  const indexing: ServiceHost = await startIndexing(parseEnv("indexing", indexingEnv, env));
  const bus = await Bus.connect({
    url: natsUrl,
    name: "bench-search",
    source: "nearhub/bench",
    names: new Names(namespace),
    logger: silentLogger,
  });
  // As the namespace's admin: a reader of everything, as the in-process calls are.
  const client = createClient(SearchService, `127.0.0.1:${indexing.grpcPort}`, { metadata: adminAuth(namespace) });
  try {
    const { total, totalIsLowerBound } = await client.search({ pageSize: 1 });
    const samples: number[] = [];
    for (let i = 0; i < EVENTS; i++) {
      const repo = `benchrepo${i}x${namespace}`;
      const t = process.hrtime.bigint();
      await bus.publishEvent(mirrorAdded, {
        mirror: { name: `github.com/bench/${repo}`, upstream: "github.com", owner: "bench", repo, generation: 1n },
      });
      const giveUp = Date.now() + 30_000;
      for (;;) {
        const { hits } = await client.search({ query: repo, kind: DocumentKind.GIT_REPO, pageSize: 1 });
        if (hits.length > 0) break;
        if (Date.now() > giveUp) throw new Error(`event ${i} was not searchable after 30 s`);
        await sleep(1);
      }
      samples.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    samples.sort((a, b) => a - b);
    console.log(
      `  event → searchable (${EVENTS} events into the ${totalIsLowerBound ? `≥ ${total}` : total}-document index, publish to first hit): median ${percentile(samples, 50).toFixed(1)} ms   p99 ${percentile(samples, 99).toFixed(1)} ms   (target p99 ≤ 500 ms)`,
    );
  } finally {
    client.$close();
    await bus.drain();
    await indexing.stop();
    await deleteNamespace(natsUrl, namespace);
  }
}

/**
 * The gRPC server, in a process of its own (bench/search-server.ts) as the indexing service
 * is deployed: the load client's encoding, decoding and garbage stay off the server's event
 * loop. It runs with the V8 flags `nearhub up` gives every service.
 */
class SearchServer {
  private constructor(
    private readonly process: BenchChild<SearchServerRequest, SearchServerMessage>,
    readonly port: number,
  ) {}

  static async start(file: string): Promise<SearchServer> {
    const child = await BenchChild.fork<SearchServerRequest, SearchServerMessage>("search server", "search-server.ts", {
      args: [file],
      nodeFlags: ["--max-semi-space-size=32"],
      env: { NEARHUB_BENCH_SEARCH_SERVER: "1" },
    });
    if (child.first.type === "ready") return new SearchServer(child, child.first.port);
    child.kill();
    throw new Error(`search server answered ${child.first.type} instead of ready`);
  }

  /** Starts recording the server's garbage collections. */
  async gcStart(): Promise<void> {
    await this.process.request({ type: "gc-start" });
  }

  /** The server's garbage collections since {@link gcStart}. */
  async gcStop(): Promise<GcFigures | undefined> {
    const m = await this.process.request({ type: "gc-stop" }, "gc");
    return m?.type === "gc" ? m.figures : undefined;
  }

  stop(): Promise<void> {
    return this.process.stop({ type: "stop" }, "stopped");
  }
}

/** The gRPC client process (bench/search-client.ts) that times the queries. */
class SearchClient {
  private constructor(private readonly process: BenchChild<SearchClientRequest, SearchClientMessage>) {}

  static async start(port: number): Promise<SearchClient> {
    const child = await BenchChild.fork<SearchClientRequest, SearchClientMessage>("search client", "search-client.ts", {
      args: [String(port)],
      nodeFlags: ["--expose-gc"],
      env: { NEARHUB_BENCH_SEARCH_CLIENT: "1" },
    });
    if (child.first.type === "ready") return new SearchClient(child);
    child.kill();
    throw new Error(`search client answered ${child.first.type} instead of ready`);
  }

  /** Times these searches, one at a time. */
  searches(searches: Request[]): Promise<Figures> {
    return this.figures({ type: "run", searches });
  }

  /** Times these suggests, one at a time. */
  suggests(prefixes: string[]): Promise<Figures> {
    return this.figures({ type: "run", prefixes });
  }

  /** Sends these searches once, unmeasured, then collects the client's garbage. */
  async send(searches: Request[]): Promise<void> {
    await this.process.request({ type: "send", searches }, "sent");
  }

  private async figures(request: SearchClientRequest): Promise<Figures> {
    const m = await this.process.request(request, "figures");
    if (m?.type !== "figures") throw new Error("the search client stopped before answering");
    return m.figures;
  }

  stop(): Promise<void> {
    return this.process.stop({ type: "stop" }, "stopped");
  }
}

const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");

/** The handler's context for in-process calls: nothing in Search or Suggest reads it. */
const inProcess = {
  method: "bench",
  service: "nearhub.search.v1.SearchService",
  peer: "in-process",
  metadata: new Metadata(),
  deadline: undefined,
  signal: new AbortController().signal,
  logger: silentLogger,
  // As the benchmark's search server (an RpcServer without an access decider): everything readable.
  can: () => true,
  authorize: async () => undefined,
} as unknown as CallContext;

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-bench-search-"));
  const namespace = `bench${Date.now().toString(36)}`;
  // The index file is where the indexing service of the last part will find it.
  const serviceDir = join(dir, "service");
  const file = join(serviceDir, `search-${namespace}-bench.sqlite`);
  mkdirSync(serviceDir, { recursive: true });
  // BENCH_SEARCH_FILE keeps the index for another run, which then skips indexing.
  if (KEEP) symlinkSync(KEEP, file);
  let index = new SqliteSearchIndex(file);
  const reused = KEEP !== undefined && (await index.count()) >= DOCS;
  let server: SearchServer | undefined;
  try {
    // Indexing throughput: the backend's bulk path, BATCH documents per transaction, as a
    // rebuild writes; documents are generated batch by batch (not counted in the rate).
    console.log(`search: ${DOCS} synthetic model documents, embedded SQLite FTS5 backend (load ${loadavg()})`);
    let generating = 0;
    let writing = 0;
    for (let i = 0; i < (reused ? 0 : DOCS); i += BATCH) {
      let t = process.hrtime.bigint();
      const batch = Array.from({ length: Math.min(BATCH, DOCS - i) }, (_, j) => ({ upsert: syntheticDocument(i + j) }));
      generating += Number(process.hrtime.bigint() - t) / 1e9;
      t = process.hrtime.bigint();
      index.applySync(batch);
      writing += Number(process.hrtime.bigint() - t) / 1e9;
      if (DOCS >= 200_000 && (i / BATCH) % 40 === 39) {
        console.log(
          `    … ${i + BATCH} documents, ${((i + BATCH) / writing).toFixed(0)} docs/s so far (load ${loadavg()})`,
        );
      }
    }
    await index.close();
    const real = realpathSync(file);
    const bytes = ["", "-wal"].reduce(
      (n, suffix) => n + (statSync(`${real}${suffix}`, { throwIfNoEntry: false })?.size ?? 0),
      0,
    );
    index = new SqliteSearchIndex(file);
    console.log(
      reused
        ? `  indexing: skipped, ${KEEP ?? ""} reused (${(bytes / 2 ** 20).toFixed(0)} MiB on disk)`
        : `  indexing: ${(DOCS / writing).toFixed(0)} docs/s (${writing.toFixed(1)} s writing, ${generating.toFixed(1)} s generating, ${(bytes / 2 ** 20).toFixed(0)} MiB on disk)`,
    );

    const api = searchApi(index);
    server = await SearchServer.start(file);
    const client = await SearchClient.start(server.port);
    const mix = queryMix();
    // Warm the file into the page cache once (a restarted service reads the same way).
    for (const requests of Object.values(mix)) {
      for (const r of requests.slice(0, 5)) await api.search(create(SearchRequestSchema, r), inProcess);
    }
    const floor = await client.suggests(Array.from({ length: QUERIES }, () => ""));
    console.log(
      `  ${QUERIES} sequential queries per kind, page of 20; gRPC = a client process of its own, the server in another (as deployed); in-process = the Search handler without gRPC, in this process`,
    );
    console.log(`    gRPC round trip alone (empty Suggest) ${fmt(floor, "client CPU")}   (load ${loadavg()})`);
    const worst = { grpc: 0, local: 0, grpcCpu: 0, localCpu: 0 };
    const row = (kind: string, local: Figures, grpc: Figures) => {
      worst.grpc = Math.max(worst.grpc, grpc.p99);
      worst.local = Math.max(worst.local, local.p99);
      worst.grpcCpu = Math.max(worst.grpcCpu, grpc.cpuP99);
      worst.localCpu = Math.max(worst.localCpu, local.cpuP99);
      console.log(`    ${kind.padEnd(16)} gRPC ${fmt(grpc, "client CPU")}`);
      console.log(
        `    ${"".padEnd(16)} in-process ${fmt(local)}   gRPC cost: median ${((grpc.median - local.median) / 1000).toFixed(2)} ms`,
      );
    };
    const gc: GcFigures = { minor: 0, minorMaxMs: 0, major: 0, majorMaxMs: 0, totalMs: 0 };
    const grpcTimed = async (run: () => Promise<Figures>) => {
      await server?.gcStart();
      const figures = await run();
      const g = await server?.gcStop();
      if (g) {
        gc.minor += g.minor;
        gc.major += g.major;
        gc.totalMs += g.totalMs;
        gc.minorMaxMs = Math.max(gc.minorMaxMs, g.minorMaxMs);
        gc.majorMaxMs = Math.max(gc.majorMaxMs, g.majorMaxMs);
      }
      return figures;
    };
    // In-process figures first, then the gRPC ones; the whole mix is sent once unmeasured so the
    // server's code is compiled and its young generation sized as in steady state.
    const local = new Map<string, Figures>();
    for (const [kind, requests] of Object.entries(mix)) {
      local.set(kind, await time(requests, (r) => api.search(create(SearchRequestSchema, r), inProcess)));
    }
    const prefixes = Array.from({ length: QUERIES }, () => pick(FAMILIES).slice(0, 2));
    const localSuggest = await time(prefixes, (prefix) =>
      api.suggest(create(SuggestRequestSchema, { prefix }), inProcess),
    );
    await client.send(Object.values(mix).flat());
    for (const [kind, requests] of Object.entries(mix)) {
      const grpc = await grpcTimed(() => client.searches(requests));
      row(kind, local.get(kind) as Figures, grpc);
    }
    const suggest = await grpcTimed(() => client.suggests(prefixes));
    row("suggest", localSuggest, suggest);
    console.log(
      `    server GC during the gRPC queries: ${gc.minor} scavenges (longest ${gc.minorMaxMs.toFixed(2)} ms), ${gc.major} major/incremental (longest ${gc.majorMaxMs.toFixed(2)} ms), ${gc.totalMs.toFixed(1)} ms in all`,
    );
    console.log(
      `    worst p99 over the mix: gRPC ${(worst.grpc / 1000).toFixed(2)} ms, in-process ${(worst.local / 1000).toFixed(2)} ms; CPU per query p99: gRPC client ${(worst.grpcCpu / 1000).toFixed(2)} ms, in-process ${(worst.localCpu / 1000).toFixed(2)} ms (target ≤ 15 ms, operators' bar 100 ms; load ${loadavg()})`,
    );
    await client.stop();
    await server.stop();

    // Baseline: the same term queries in-process, FTS5 index against a brute-force LIKE scan
    // (every row read: SCANS samples of it).
    const terms = mix["term"]?.map((r) => r.query ?? "") ?? [];
    const fts = await time(terms, (text) => index.searchSync(newQuery({ text, limit: 20 })));
    const scan = await time(terms.slice(0, SCANS), (text) => index.scanSync(text, 20), Math.min(2, SCANS));
    console.log(`  in-process, term queries, same table:`);
    console.log(`    FTS5 bm25        ${fmt(fts)}`);
    console.log(`    LIKE scan        ${fmt(scan)}   (${SCANS} samples)`);
    console.log(
      `    ratio (scan/FTS5): median ${(scan.median / fts.median).toFixed(1)}x   p99 ${(scan.p99 / fts.p99).toFixed(1)}x`,
    );
    await index.close();

    // The indexing service opens the benchmark's file as its active index.
    writeFileSync(join(serviceDir, `search-${namespace}.current`), basename(file));
    await eventToSearchable(serviceDir, namespace);
  } finally {
    await server?.stop();
    await index.close();
    await rm(dir, { recursive: true, force: true });
  }
}
