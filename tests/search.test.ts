import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { listDatasets, listModels } from "@huggingface/hub";
import {
  Bus,
  Code,
  NearhubError,
  Names,
  RpcServer,
  ServiceMetrics,
  createClient,
  parseEnv,
  silentLogger,
  type Client,
  type ServiceHost,
} from "@nearhub/platform";
import {
  mirrorAdded,
  mirrorFailed,
  mirrorPaused,
  mirrorRemoved,
  mirrorResumed,
  mirrorSynced,
} from "@nearhub/proto/events";
import { DocumentKind, SearchService, type SortField } from "@nearhub/proto/search";
import { MirrorState } from "@nearhub/proto/sync";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { startStorage, storageEnv } from "@nearhub/storage";
import { RegistryService, RepoKind } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import { createHash } from "node:crypto";
import { SqliteSearchIndex, indexingEnv, newDocument, searchApi, startIndexing } from "@nearhub/indexing";
import { corpus } from "@nearhub/indexing/testing";
import {
  deleteNamespace,
  eventually,
  nats,
  serviceEnv,
  tempDir,
  uniqueNamespace,
  adminAuth,
  adminToken,
} from "./harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));

/** Runs the nearhub CLI as a user would (asynchronously: the edge lives in this process). */
function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--conditions=development", "--import", "tsx", "packages/cli/src/bin.ts", ...args],
      { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Parses a JSON answer, failing with the status and body when it is not JSON. */
async function json(response: Response): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new Error(`HTTP ${response.status} answered a body that is not JSON: ${text.slice(0, 200)}`);
  }
}

// Mirror events from JetStream, through the indexing service, to the edge and the CLI.
/** Search here runs as on a public mirror: anyone may read everything (access.test.ts covers filtering). */
const PUBLIC = { NEARHUB_ANONYMOUS_READ: "*" };

describe("search: events in, documents out, through gRPC, the edge and the CLI", () => {
  const ns = uniqueNamespace();
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let indexing: ServiceHost;
  let edge: Edge;
  let bus: Bus;
  let search: Client<typeof SearchService>;
  let base: string;
  const NAME = "github.com/acme/rocket";

  /** Publishes an event as the sync service would (CloudEvents headers, awaited PubAck). */
  const publish: Bus["publishEvent"] = (event, body) => bus.publishEvent(event, body);
  const mirror = (name: string, generation: bigint, state = MirrorState.PENDING) => {
    const [upstream = "", owner = "", repo = ""] = name.split("/");
    return {
      mirror: { name, upstream, owner, repo, generation, state, createdAt: timestampFromMs(Date.UTC(2026, 0, 1)) },
    };
  };
  const find = async (query: string, kind = DocumentKind.GIT_REPO) =>
    (await search.search({ query, kind, pageSize: 100 })).hits;
  /** Publishes a marker and waits until it is searchable: everything published before it was handled. */
  let markers = 0;
  const settle = async () => {
    const name = `github.com/marker/m${++markers}x`;
    await publish(mirrorAdded, mirror(name, 1n));
    await eventually(
      async () => ((await find(`m${markers}x`)).length > 0 ? true : undefined),
      15_000,
      `marker ${name}`,
    );
  };

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    indexing = await startIndexing(parseEnv("indexing", indexingEnv, serviceEnv(natsUrl, ns, dir.path, PUBLIC)));
    edge = await startEdge(
      parseEnv(
        "edge",
        edgeEnv,
        serviceEnv(natsUrl, ns, dir.path, { ...PUBLIC, NEARHUB_INDEXING_ADDR: `127.0.0.1:${indexing.grpcPort}` }),
      ),
    );
    base = `http://127.0.0.1:${edge.httpPort}`;
    bus = await Bus.connect({
      url: natsUrl,
      name: "search-test",
      source: "nearhub/test",
      names: new Names(ns),
      logger: silentLogger,
    });
    search = createClient(SearchService, `127.0.0.1:${indexing.grpcPort}`, { metadata: adminAuth(ns) });
  });

  after(async () => {
    search?.$close();
    await bus?.drain();
    await edge?.stop();
    await indexing?.stop();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("every mirror event type changes the document; a removed repo disappears and stays gone", async () => {
    await publish(mirrorAdded, mirror(NAME, 1n));
    const hits = await eventually(async () => {
      const h = await find("rocket");
      return h.length > 0 ? h : undefined;
    });
    assert.equal(hits[0]?.id, NAME);
    assert.equal(hits[0]?.upstream, "github.com");
    assert.equal(hits[0]?.author, "acme");
    assert.equal(hits[0]?.state, "pending");

    const stateIs = (state: string) =>
      eventually(async () => ((await find("rocket"))[0]?.state === state ? true : undefined), 10_000, `state ${state}`);
    await publish(mirrorSynced, { name: NAME, changes: [{ ref: "refs/heads/main", newSha: "a".repeat(40) }] });
    await stateIs("in_sync");
    await publish(mirrorFailed, { name: NAME, error: "upstream timed out", consecutiveFailures: 1 });
    await stateIs("failed");
    await publish(mirrorPaused, { name: NAME, reason: "maintenance", by: "user" });
    await stateIs("paused");
    await publish(mirrorResumed, { name: NAME, by: "user" });
    await stateIs("pending");
    const filtered = await search.search({
      kind: DocumentKind.GIT_REPO,
      filters: { state: "pending", upstream: "github.com" },
    });
    assert.ok(filtered.hits.some((h) => h.id === NAME));

    await publish(mirrorRemoved, { name: NAME, generation: 2n });
    await eventually(async () => ((await find("rocket")).length === 0 ? true : undefined), 10_000, "removal");
    // A late, older definition and a late status event arrive after the removal.
    await publish(mirrorAdded, mirror(NAME, 1n, MirrorState.IN_SYNC));
    await publish(mirrorSynced, { name: NAME });
    await settle();
    assert.deepEqual(await find("rocket"), []);
    // A newer definition brings it back.
    await publish(mirrorAdded, mirror(NAME, 3n, MirrorState.IN_SYNC));
    await eventually(async () => ((await find("rocket"))[0]?.state === "in_sync" ? true : undefined));
  });

  test("replayed and out-of-order events converge to the same index", async () => {
    const names = ["github.com/conv/alpha", "github.com/conv/beta", "github.com/conv/gamma"];
    const history = [
      () => publish(mirrorAdded, mirror(names[0] ?? "", 1n)),
      () => publish(mirrorAdded, mirror(names[0] ?? "", 2n, MirrorState.IN_SYNC)),
      () => publish(mirrorAdded, mirror(names[1] ?? "", 1n)),
      () => publish(mirrorRemoved, { name: names[1] ?? "", generation: 2n }),
      () => publish(mirrorAdded, mirror(names[2] ?? "", 5n, MirrorState.FAILED)),
    ];
    const snapshot = async () => (await find("conv")).map((h) => `${h.id}:${h.state}`).sort();
    for (const step of history) await step();
    await settle();
    const expected = await snapshot();
    assert.deepEqual(expected, ["github.com/conv/alpha:in_sync", "github.com/conv/gamma:failed"]);
    // The same history again, reversed and then doubled: every event a replay or out of order.
    for (const step of [...history].reverse()) await step();
    for (const step of [...history, ...history]) await step();
    await settle();
    assert.deepEqual(await snapshot(), expected);
  });

  test("the edge's /api/search and the CLI find repositories; hostile queries answer 200 or 400, never 500", async () => {
    await eventually(async () => ((await find("rocket")).length > 0 ? true : undefined));
    const ok = await fetch(`${base}/api/search?q=rocket&kind=repo`);
    assert.equal(ok.status, 200);
    const body = (await json(ok)) as { hits: Array<{ id: string; kind: string }>; total: string };
    assert.equal(body.hits[0]?.id, NAME);
    assert.equal(body.hits[0]?.kind, "DOCUMENT_KIND_GIT_REPO");

    const hostile = [
      "",
      'rocket" OR "1"="1',
      "rocket AND NOT x",
      "NEAR(rocket acme)",
      "* ^ : ( ) -",
      "通义千问",
      "🤗🚀",
      "rocket 🚀",
      "x".repeat(10_000),
      "%00%ff",
    ];
    for (const q of hostile) {
      const response = await fetch(`${base}/api/search?${new URLSearchParams({ q }).toString()}`);
      assert.equal(response.status, 200, `q=${JSON.stringify(q.slice(0, 30))}`);
      assert.ok(Array.isArray(((await json(response)) as { hits?: unknown[] }).hits ?? []));
    }
    const rocketEmoji = (await json(await fetch(`${base}/api/search?q=${encodeURIComponent("rocket 🚀")}`))) as {
      hits: Array<{ id: string }>;
    };
    assert.equal(rocketEmoji.hits[0]?.id, NAME);

    const bad: Array<[string, RegExp]> = [
      ["kind=planet", /kind "planet" must be one of/],
      ["limit=0", /limit "0" must be a whole number from 1 to 100/],
      ["limit=abc", /limit "abc"/],
      ["limit=101", /limit "101"/],
      ["cursor=bm90LWEtY3Vyc29y", /cursor is not one this server returned/],
      ["sort=random", /sort "random" must be one of/],
      ["direction=sideways", /direction "sideways"/],
      [`author=${"a".repeat(300)}`, /filter author is 300 characters/],
      [`q=${"y".repeat(12_000)}&${"tag=t&".repeat(21)}`, /21 tag filters given; the limit is 20/],
    ];
    for (const [query, message] of bad) {
      const response = await fetch(`${base}/api/search?${query}`);
      assert.equal(response.status, 400, query.slice(0, 40));
      assert.match(((await json(response)) as { error: string }).error, message);
    }

    const suggest = (await json(await fetch(`${base}/api/suggest?q=rock&kind=repo`))) as {
      suggestions: Array<{ id: string }>;
    };
    assert.deepEqual(
      suggest.suggestions.map((s) => s.id),
      [NAME],
    );
    assert.equal((await fetch(`${base}/api/suggest?q=rock&limit=50`)).status, 400);

    const result = await cli(["search", "rocket", "--kind", "repo", "--json"], { NEARHUB_URL: base });
    assert.equal(result.code, 0, result.stderr);
    const printed = JSON.parse(result.stdout) as { hits: Array<{ id: string }> };
    assert.equal(printed.hits[0]?.id, NAME);
    const usage = await cli(["search", "rocket", "--kind", "planet"], { NEARHUB_URL: base });
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--kind planet must be one of repo, model, dataset, all/);
  });

  test("gRPC refuses what it cannot serve with INVALID_ARGUMENT and a reason", async () => {
    const refused = async (request: Parameters<typeof search.search>[0], message: RegExp) => {
      const error = await search.search(request).then(
        () => undefined,
        (e: unknown) => NearhubError.from(e),
      );
      assert.equal(error?.code, Code.InvalidArgument);
      assert.match(error?.rawMessage ?? "", message);
    };
    await refused({ pageSize: 101 }, /page_size 101 is above the maximum of 100/);
    await refused({ kind: 42 as DocumentKind }, /kind 42 is not one of/);
    await refused({ sort: 42 as SortField }, /sort 42 is not one of/);
    await refused({ query: "q".repeat(17_000) }, /query is 17000 characters; the limit is 16384/);
    await refused({ cursor: Buffer.from("o:20000").toString("base64url") }, /pages past the first 10000/);
  });

  test("nearhub index rebuild replays the events into a new index and switches with no empty moment", async () => {
    await eventually(async () => ((await find("rocket")).length > 0 ? true : undefined));
    const before = (await search.search({ query: "", kind: DocumentKind.GIT_REPO, pageSize: 100 })).hits
      .map((h) => h.id)
      .sort();
    // Search continuously while the rebuild runs; every answer must still have the document.
    let rebuilding = true;
    const totals: number[] = [];
    const poller = (async () => {
      while (rebuilding) totals.push((await find("rocket")).length);
    })();
    const result = await cli(["index", "rebuild", "--json"], { NEARHUB_URL: base, NEARHUB_TOKEN: adminToken(ns) });
    rebuilding = false;
    await poller;
    assert.equal(result.code, 0, result.stderr);
    const done = JSON.parse(result.stdout) as {
      done: boolean;
      documents: number;
      indexName: string;
      eventsReplayed: number;
    };
    assert.equal(done.done, true);
    assert.ok(done.eventsReplayed > 10, `replayed ${done.eventsReplayed} events`);
    assert.ok(totals.length > 0 && totals.every((n) => n === 1), `searches during the rebuild: ${totals.join(",")}`);
    const afterIds = (await search.search({ query: "", kind: DocumentKind.GIT_REPO, pageSize: 100 })).hits
      .map((h) => h.id)
      .sort();
    assert.deepEqual(afterIds, before);
    assert.equal(done.documents, before.length);
    // The live consumer writes to the new index.
    await publish(mirrorAdded, mirror("github.com/after/rebuild", 1n));
    await eventually(async () => ((await find("after")).length > 0 ? true : undefined));
  });
});

// Model documents from the storage registry's events: manifest and README.md read from storage.
describe("search: models and datasets published to the registry become searchable", () => {
  const ns = uniqueNamespace();
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let storageHost: ServiceHost;
  let indexing: ServiceHost;
  let edge: Edge;
  let registry: Client<typeof RegistryService>;
  let blobs: Client<typeof StorageService>;
  let search: Client<typeof SearchService>;
  let hubUrl: string;

  const putBlob = async (bytes: Uint8Array) => {
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    await blobs.putBlob(
      (async function* () {
        yield { part: { case: "header" as const, value: { sha256, size: BigInt(bytes.byteLength) } } };
        yield { part: { case: "chunk" as const, value: bytes } };
      })(),
    );
    return { sha256, size: BigInt(bytes.byteLength) };
  };
  const publishModel = async (kind: RepoKind, id: string, readme: string, weights: string) => {
    const card = await putBlob(new TextEncoder().encode(readme));
    const model = await putBlob(new TextEncoder().encode(weights));
    await registry.putRevision({
      repo: { kind, id },
      revision: {
        message: "upload",
        author: "test",
        entries: [
          { path: "README.md", ...card },
          { path: "model.safetensors", ...model, lfs: true },
        ],
      },
      branch: "main",
    });
  };

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const env = (extra: Record<string, string> = {}) => serviceEnv(natsUrl, ns, dir.path, { ...PUBLIC, ...extra });
    storageHost = await startStorage(parseEnv("storage", storageEnv, env()));
    const storageAddr = `127.0.0.1:${storageHost.grpcPort}`;
    indexing = await startIndexing(parseEnv("indexing", indexingEnv, env({ NEARHUB_STORAGE_ADDR: storageAddr })));
    edge = await startEdge(
      parseEnv(
        "edge",
        edgeEnv,
        env({ NEARHUB_INDEXING_ADDR: `127.0.0.1:${indexing.grpcPort}`, NEARHUB_STORAGE_ADDR: storageAddr }),
      ),
    );
    hubUrl = `http://127.0.0.1:${edge.httpPort}`;
    registry = createClient(RegistryService, storageAddr, { metadata: adminAuth(ns) });
    blobs = createClient(StorageService, storageAddr, { metadata: adminAuth(ns) });
    search = createClient(SearchService, `127.0.0.1:${indexing.grpcPort}`, { metadata: adminAuth(ns) });
  });

  after(async () => {
    for (const c of [registry, blobs, search]) c?.$close();
    await edge?.stop();
    await indexing?.stop();
    await storageHost?.stop();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("a published model is found by its card, tags and files; a new revision replaces it; deletion removes it", async () => {
    const readme = [
      "---",
      "license: apache-2.0",
      "library_name: transformers",
      "pipeline_tag: text-generation",
      "language: [zh, en]",
      "tags: [chat]",
      "---",
      "# Rocket 7B",
      "",
      "A bilingual model trained on 通义 corpora for interplanetary chat.",
    ].join("\n");
    await publishModel(RepoKind.MODEL, "acme/rocket-7b", readme, "weights v1");
    const hits = await eventually(
      async () => {
        const { hits } = await search.search({ query: "interplanetary", kind: DocumentKind.MODEL, includeFiles: true });
        return hits.length > 0 ? hits : undefined;
      },
      15_000,
      "the model to be indexed",
    );
    const hit = hits[0];
    assert.equal(hit?.id, "acme/rocket-7b");
    assert.equal(hit?.author, "acme");
    assert.equal(hit?.license, "apache-2.0");
    assert.equal(hit?.pipelineTag, "text-generation");
    assert.deepEqual(hit?.tags, ["chat", "zh", "en"]);
    assert.deepEqual(
      hit?.files.map((f) => f.path),
      ["README.md", "model.safetensors"],
    );
    assert.match(hit?.sha ?? "", /^[0-9a-f]{40}$/);
    const firstSha = hit?.sha;
    // Without include_files, hits come without their file list.
    const [bare] = (await search.search({ query: "interplanetary", kind: DocumentKind.MODEL })).hits;
    assert.equal(bare?.id, "acme/rocket-7b");
    assert.deepEqual(bare?.files, []);

    // Through the Hub API, with the real client.
    const listed: string[] = [];
    for await (const m of listModels({ hubUrl, search: { owner: "acme", tags: ["zh", "transformers"] } }))
      listed.push(m.name);
    assert.deepEqual(listed, ["acme/rocket-7b"]);

    // A dataset with the same id does not collide with the model.
    await publishModel(RepoKind.DATASET, "acme/rocket-7b", "# Rocket logs\n\nTelemetry of many launches.", "rows");
    const datasets = await eventually(
      async () => {
        const found: string[] = [];
        for await (const d of listDatasets({ hubUrl, search: { query: "telemetry" } })) found.push(d.name);
        return found.length > 0 ? found : undefined;
      },
      15_000,
      "the dataset to be indexed",
    );
    assert.deepEqual(datasets, ["acme/rocket-7b"]);

    // A new revision on main replaces the document.
    await publishModel(RepoKind.MODEL, "acme/rocket-7b", readme.replace("interplanetary", "orbital"), "weights v2");
    await eventually(
      async () => {
        const { hits: h } = await search.search({ query: "orbital", kind: DocumentKind.MODEL });
        return h[0]?.sha && h[0].sha !== firstSha ? true : undefined;
      },
      15_000,
      "the new revision",
    );
    assert.deepEqual((await search.search({ query: "interplanetary", kind: DocumentKind.MODEL })).hits, []);

    // Deleting the repo removes the model, not the dataset.
    await registry.deleteRepo({ repo: { kind: RepoKind.MODEL, id: "acme/rocket-7b" } });
    await eventually(
      async () => {
        const { hits: h } = await search.search({ query: "rocket", kind: DocumentKind.MODEL });
        return h.length === 0 ? true : undefined;
      },
      15_000,
      "the model to be removed",
    );
    const left = await search.search({ query: "rocket" });
    assert.deepEqual(
      left.hits.map((h) => h.id),
      ["datasets/acme/rocket-7b"],
    );
  });
});

// The Hugging Face Hub listing contract, with the real @huggingface/hub client against the edge.
describe("search: /api/models and /api/datasets answer as the Hugging Face Hub does", () => {
  const ns = uniqueNamespace();
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let index: SqliteSearchIndex;
  let server: RpcServer;
  let edge: Edge;
  let hubUrl: string;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    // Model documents come from the index's own upsert API; the edge reaches it over gRPC.
    index = new SqliteSearchIndex(":memory:");
    const synthetic = Array.from({ length: 150 }, (_, i) =>
      newDocument({
        id: `bulk/model-${String(i).padStart(3, "0")}`,
        kind: DocumentKind.MODEL,
        version: 1n,
        author: "bulk",
        tags: ["onnx"],
        libraryName: "onnx",
        downloads: i,
        updatedAtMs: Date.UTC(2026, 0, 1) + i,
      }),
    );
    await index.apply([...corpus(), ...synthetic].map((doc) => ({ upsert: doc })));
    server = new RpcServer({ service: "indexing", logger: silentLogger, metrics: new ServiceMetrics("indexing") });
    server.addService(SearchService, searchApi(index));
    const port = await server.listen("127.0.0.1", 0);
    edge = await startEdge(
      parseEnv(
        "edge",
        edgeEnv,
        serviceEnv(natsUrl, ns, dir.path, { ...PUBLIC, NEARHUB_INDEXING_ADDR: `127.0.0.1:${port}` }),
      ),
    );
    hubUrl = `http://127.0.0.1:${edge.httpPort}`;
  });

  after(async () => {
    await edge?.stop();
    await server?.shutdown(1000);
    await index?.close();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  const collect = async <T>(it: AsyncIterable<T>): Promise<T[]> => {
    const out: T[] = [];
    for await (const item of it) out.push(item);
    return out;
  };

  test("listModels: search, owner, task, tags, sort and extra fields", async () => {
    const bert = await collect(listModels({ hubUrl, search: { query: "bert" } }));
    assert.deepEqual(
      bert.map((m) => m.name),
      ["google-bert/bert-base-uncased"],
    );
    const m = bert[0];
    assert.equal(m?.task, "fill-mask");
    assert.equal(m?.downloads, 50_000_000);
    assert.equal(m?.likes, 2000);
    assert.equal(m?.private, false);
    assert.equal(m?.gated, false);
    assert.equal(m?.updatedAt.toISOString(), new Date(Date.UTC(2026, 0, 4)).toISOString());
    assert.match(m?.id ?? "", /^[0-9a-f]{24}$/);

    const owned = await collect(listModels({ hubUrl, search: { owner: "openai-community" } }));
    assert.deepEqual(
      owned.map((x) => x.name),
      ["openai-community/gpt2"],
    );
    const tasks = await collect(listModels({ hubUrl, search: { task: "text-generation" } }));
    assert.deepEqual(tasks.map((x) => x.name).sort(), ["Qwen/通义千问-7B", "openai-community/gpt2"]);
    const tagged = await collect(listModels({ hubUrl, search: { tags: ["transformers", "en"] }, sort: "downloads" }));
    assert.deepEqual(
      tagged.map((x) => x.name),
      ["google-bert/bert-base-uncased", "openai-community/gpt2"],
    );
    const extra = await collect(
      listModels({ hubUrl, search: { query: "gpt2" }, additionalFields: ["library_name", "tags", "author", "sha"] }),
    );
    assert.equal(extra[0]?.library_name, "transformers");
    assert.deepEqual(extra[0]?.tags, ["transformers", "pytorch", "text-generation", "en"]);
    assert.equal(extra[0]?.author, "openai-community");
    const files = await collect(listModels({ hubUrl, search: { query: "bert" }, additionalFields: ["filePaths"] }));
    assert.deepEqual(files[0]?.filePaths, ["config.json", "model.safetensors"]);
    const chinese = await collect(listModels({ hubUrl, search: { query: "通义千问" } }));
    assert.deepEqual(
      chinese.map((x) => x.name),
      ["Qwen/通义千问-7B"],
    );
  });

  test("listModels follows the Link header past 100 items and stops at its limit", async () => {
    const all = await collect(listModels({ hubUrl, search: { owner: "bulk" }, sort: "downloads", limit: 130 }));
    assert.equal(all.length, 130);
    assert.equal(new Set(all.map((x) => x.name)).size, 130);
    assert.equal(all[0]?.name, "bulk/model-149", "most downloaded first");
    const everything = await collect(listModels({ hubUrl, search: { owner: "bulk" } }));
    assert.equal(everything.length, 150);
    const page = await fetch(`${hubUrl}/api/models?author=bulk&limit=120`);
    const link = page.headers.get("link") ?? "";
    assert.match(
      link,
      new RegExp(`^<${hubUrl}/api/models\\?.*cursor=.*>; rel="next"$`),
      "the mirror itself, never upstream",
    );
  });

  test("listDatasets and the default item shapes match the Hub's", async () => {
    const datasets = await collect(listDatasets({ hubUrl, search: { query: "squad" } }));
    assert.deepEqual(
      datasets.map((d) => d.name),
      ["rajpurkar/squad"],
    );
    assert.equal(datasets[0]?.downloads, 100_000);

    const models = (await json(await fetch(`${hubUrl}/api/models?search=gpt2`))) as Array<Record<string, unknown>>;
    assert.deepEqual(Object.keys(models[0] ?? {}).sort(), [
      "_id",
      "createdAt",
      "downloads",
      "id",
      "library_name",
      "likes",
      "modelId",
      "pipeline_tag",
      "private",
      "tags",
      "trendingScore",
    ]);
    assert.equal(models[0]?.["modelId"], "openai-community/gpt2");
    const expanded = (await json(await fetch(`${hubUrl}/api/models?search=gpt2&expand=downloads&expand=sha`))) as Array<
      Record<string, unknown>
    >;
    assert.deepEqual(
      Object.keys(expanded[0] ?? {}).sort(),
      ["_id", "downloads", "id"],
      "expand lists exactly what it asks",
    );
    const full = (await json(await fetch(`${hubUrl}/api/models?search=bert&full=true`))) as Array<
      Record<string, unknown>
    >;
    assert.deepEqual(full[0]?.["siblings"], [{ rfilename: "config.json" }, { rfilename: "model.safetensors" }]);
    assert.equal(full[0]?.["sha"], "86b5e0934494bd15c9632b12f734a8a67f723594");
    const ascending = (await json(
      await fetch(`${hubUrl}/api/models?author=bulk&sort=downloads&direction=1&limit=2`),
    )) as Array<{
      id: string;
    }>;
    assert.deepEqual(
      ascending.map((x) => x.id),
      ["bulk/model-000", "bulk/model-001"],
    );
    const byFilter = (await json(await fetch(`${hubUrl}/api/models?filter=license:mit`))) as Array<{ id: string }>;
    assert.deepEqual(
      byFilter.map((x) => x.id),
      ["openai-community/gpt2"],
    );
  });

  test("hostile parameters: 400 with what to fix, or 200 with a list; never a 500", async () => {
    const bad: Array<[string, RegExp]> = [
      ["expand=everything", /expand "everything" must be one of/],
      ["expand=downloads&full=true", /either expand or full/],
      ["limit=0", /limit "0" must be a whole number from 1 to 1000/],
      ["limit=5000", /limit "5000"/],
      ["limit=1e3", /limit "1e3"/],
      ["direction=2", /direction "2" must be -1/],
      ["sort=random", /sort "random" must be one of/],
      ["cursor=%2E%2E%2F%2E%2E", /cursor is not one this server returned/],
    ];
    for (const [query, message] of bad) {
      const response = await fetch(`${hubUrl}/api/models?${query}`);
      assert.equal(response.status, 400, query);
      assert.match(((await json(response)) as { error: string }).error, message);
    }
    for (const search of ['"', "AND OR NOT", "NEAR(", "🤗", "x".repeat(10_000), "", "../../etc/passwd", "\u0000"]) {
      for (const path of ["/api/models", "/api/datasets"]) {
        const response = await fetch(`${hubUrl}${path}?${new URLSearchParams({ search }).toString()}`);
        assert.equal(response.status, 200, `${path} search=${JSON.stringify(search.slice(0, 20))}`);
        assert.ok(Array.isArray(await json(response)));
      }
    }
    const post = await fetch(`${hubUrl}/api/models`, { method: "POST" });
    assert.equal(post.status, 405);
  });
});
