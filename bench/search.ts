/**
 * Search on the embedded backend (SQLite FTS5): indexing throughput, query latency at the
 * gRPC boundary for a mix of term, prefix, filtered and sorted queries, the same queries
 * in-process against a brute-force LIKE scan of the same table (the baseline ratio), and
 * event → searchable latency through NATS and the indexing service when a NATS server answers.
 *
 * BENCH_DOCS (default 20000) documents, BENCH_QUERIES (default 200) per query kind,
 * BENCH_EVENTS (default 100) events; loopback only.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  Bus,
  Names,
  RpcServer,
  ServiceMetrics,
  createClient,
  parseEnv,
  silentLogger,
  type ServiceHost,
} from "@nearhub/platform";
import { mirrorAdded } from "@nearhub/proto/events";
import { DocumentKind, SearchService, SortField, type SearchRequest } from "@nearhub/proto/search";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { SearchRequestSchema } from "@nearhub/proto/search";
import {
  SqliteSearchIndex,
  indexingEnv,
  newDocument,
  newQuery,
  searchApi,
  startIndexing,
  type SearchDocument,
} from "@nearhub/indexing";

const DOCS = Number(process.env["BENCH_DOCS"] ?? 20_000);
const QUERIES = Number(process.env["BENCH_QUERIES"] ?? 200);
const EVENTS = Number(process.env["BENCH_EVENTS"] ?? 100);
const BATCH = 1000;

// A small deterministic generator, so every run indexes the same corpus.
let seed = 42;
function rand(): number {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
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

function syntheticDocument(i: number): SearchDocument {
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

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

interface Figures {
  median: number;
  p99: number;
  qps: number;
}

/** Runs `call` for each input in turn (after a warm-up) and returns median and p99 in µs. */
async function time<T>(inputs: T[], call: (input: T) => unknown): Promise<Figures> {
  for (const input of inputs.slice(0, Math.min(20, inputs.length))) await call(input);
  const samples: number[] = [];
  const started = process.hrtime.bigint();
  for (const input of inputs) {
    const t = process.hrtime.bigint();
    await call(input);
    samples.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  samples.sort((a, b) => a - b);
  return { median: percentile(samples, 50), p99: percentile(samples, 99), qps: inputs.length / seconds };
}

const fmt = (f: Figures) =>
  `median ${(f.median / 1000).toFixed(2).padStart(7)} ms   p99 ${(f.p99 / 1000).toFixed(2).padStart(7)} ms   ${f.qps.toFixed(0).padStart(6)} q/s`;

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

/** Event → searchable through NATS and the real indexing service, when NATS answers. */
async function eventToSearchable(dir: string): Promise<void> {
  const natsUrl = process.env["NATS_URL"] ?? "nats://127.0.0.1:4222";
  const url = new URL(natsUrl.replace(/^nats:/, "http:"));
  if (!(await reachable(url.hostname, Number(url.port || 4222)))) {
    console.log(`  event → searchable: skipped (no NATS at ${natsUrl}; set NATS_URL)`);
    return;
  }
  const namespace = `bench${Date.now().toString(36)}`;
  const env = {
    NATS_URL: natsUrl,
    NEARHUB_NAMESPACE: namespace,
    NEARHUB_DATA_DIR: join(dir, "service"),
    NEARHUB_GRPC_PORT: "0",
    NEARHUB_METRICS_PORT: "0",
    LOG_LEVEL: "silent",
  };
  const indexing: ServiceHost = await startIndexing(parseEnv("indexing", indexingEnv, env));
  const bus = await Bus.connect({
    url: natsUrl,
    name: "bench-search",
    source: "nearhub/bench",
    names: new Names(namespace),
    logger: silentLogger,
  });
  const client = createClient(SearchService, `127.0.0.1:${indexing.grpcPort}`);
  try {
    const samples: number[] = [];
    for (let i = 0; i < EVENTS; i++) {
      const repo = `benchrepo${i}x${namespace}`;
      const t = process.hrtime.bigint();
      await bus.publishEvent(mirrorAdded, {
        mirror: { name: `github.com/bench/${repo}`, upstream: "github.com", owner: "bench", repo, generation: 1n },
      });
      for (;;) {
        const { hits } = await client.search({ query: repo, kind: DocumentKind.GIT_REPO, pageSize: 1 });
        if (hits.length > 0) break;
        await sleep(1);
      }
      samples.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    samples.sort((a, b) => a - b);
    console.log(
      `  event → searchable (${EVENTS} events, publish to first hit): median ${percentile(samples, 50).toFixed(1)} ms   p99 ${percentile(samples, 99).toFixed(1)} ms   (target p99 ≤ 500 ms)`,
    );
  } finally {
    client.$close();
    await bus.jsm.streams.delete(new Names(namespace).stream("EVENTS")).catch(() => undefined);
    await bus.jsm.streams.delete(new Names(namespace).stream("DEAD_LETTERS")).catch(() => undefined);
    await bus.drain();
    await indexing.stop();
  }
}

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-bench-search-"));
  const index = new SqliteSearchIndex(join(dir, "bench.sqlite"));
  const server = new RpcServer({ service: "indexing", logger: silentLogger, metrics: new ServiceMetrics("indexing") });
  try {
    // Indexing throughput: batches of 1000 in one transaction each, as a rebuild writes.
    const docs = Array.from({ length: DOCS }, (_, i) => syntheticDocument(i));
    const started = process.hrtime.bigint();
    for (let i = 0; i < docs.length; i += BATCH) {
      index.applySync(docs.slice(i, i + BATCH).map((doc) => ({ upsert: doc })));
    }
    const indexSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(`search: ${DOCS} synthetic model documents, embedded SQLite FTS5 backend`);
    console.log(`  indexing: ${(DOCS / indexSeconds).toFixed(0)} docs/s (${indexSeconds.toFixed(2)} s)`);

    server.addService(SearchService, searchApi(index));
    const port = await server.listen("127.0.0.1", 0);
    const client = createClient(SearchService, `127.0.0.1:${port}`);
    const mix = queryMix();
    console.log(`  gRPC Search, ${QUERIES} sequential queries per kind (page of 20):`);
    const all: Figures[] = [];
    for (const [kind, requests] of Object.entries(mix)) {
      const figures = await time(requests, (r) => client.search(r as SearchRequest));
      all.push(figures);
      console.log(`    ${kind.padEnd(16)} ${fmt(figures)}`);
    }
    const worstP99 = Math.max(...all.map((f) => f.p99)) / 1000;
    console.log(`    worst p99 over the mix: ${worstP99.toFixed(2)} ms (target ≤ 15 ms, operators' bar 100 ms)`);
    const suggest = await time(
      Array.from({ length: QUERIES }, () => pick(FAMILIES).slice(0, 2)),
      (prefix) => client.suggest({ prefix }),
    );
    console.log(`    ${"suggest".padEnd(16)} ${fmt(suggest)}`);
    client.$close();

    // Baseline: the same term queries in-process, FTS5 index against a brute-force LIKE scan.
    const terms = mix["term"]?.map((r) => r.query ?? "") ?? [];
    const fts = await time(terms, (text) => index.searchSync(newQuery({ text, limit: 20 })));
    const scan = await time(terms.slice(0, Math.max(20, Math.floor(QUERIES / 4))), (text) => index.scanSync(text, 20));
    console.log(`  in-process, term queries, same table:`);
    console.log(`    FTS5 bm25        ${fmt(fts)}`);
    console.log(`    LIKE scan        ${fmt(scan)}`);
    console.log(
      `    ratio (scan/FTS5): median ${(scan.median / fts.median).toFixed(1)}x   p99 ${(scan.p99 / fts.p99).toFixed(1)}x`,
    );

    await eventToSearchable(dir);
  } finally {
    await server.shutdown(1000);
    await index.close();
    await rm(dir, { recursive: true, force: true });
  }
}
