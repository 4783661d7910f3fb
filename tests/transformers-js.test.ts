import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { AutoModel, AutoTokenizer, env, pipeline, type Tensor } from "@huggingface/transformers";
import { parseEnv, type ServiceHost } from "@nearhub/platform";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { encodeOnnxModel, seededFloats } from "@nearhub/inference-gateway";
import { startStorage, storageEnv } from "@nearhub/storage";
import { startHubDouble, type HubDouble } from "@nearhub/testing";
import { deleteNamespace, nats, serviceEnv, tempDir, uniqueNamespace } from "./harness.js";

/*
 * transformers.js, unmodified, against the mirror: `env.remoteHost` is the edge, local models
 * are off, and its file cache is a fresh folder. A tokenizer and a tiny ONNX model written
 * here are committed to the local upstream double, pulled through the edge, and run; then the
 * upstream is stopped and a fresh cache loads them again through the mirror alone.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const gitSha1 = (b: Uint8Array) => createHash("sha1").update(`blob ${b.byteLength}\0`).update(b).digest("hex");

// A WordLevel tokenizer (lower-case, whitespace split, [CLS] A [SEP]) in the tokenizers format.
const VOCAB = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "hello", "world", "near", "hub", "models", ","];
const ID = Object.fromEntries(VOCAB.map((token, id) => [token, id])) as Record<string, number>;
const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});
const TOKENIZER_JSON = Buffer.from(
  JSON.stringify({
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: VOCAB.slice(0, 4).map((token, id) => special(id, token)),
    normalizer: { type: "Lowercase" },
    pre_tokenizer: { type: "Whitespace" },
    post_processor: {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: "[CLS]", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "[SEP]", type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: "[CLS]", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "[SEP]", type_id: 0 } },
        { Sequence: { id: "B", type_id: 1 } },
        { SpecialToken: { id: "[SEP]", type_id: 1 } },
      ],
      special_tokens: {
        "[CLS]": { id: "[CLS]", ids: [ID["[CLS]"]], tokens: ["[CLS]"] },
        "[SEP]": { id: "[SEP]", ids: [ID["[SEP]"]], tokens: ["[SEP]"] },
      },
    },
    decoder: null,
    model: { type: "WordLevel", vocab: ID, unk_token: "[UNK]" },
  }),
);
const TOKENIZER_CONFIG = Buffer.from(
  JSON.stringify({
    tokenizer_class: "PreTrainedTokenizer",
    model_max_length: 64,
    unk_token: "[UNK]",
    cls_token: "[CLS]",
    sep_token: "[SEP]",
    pad_token: "[PAD]",
  }),
);

// A BERT-shaped embedding model: last_hidden_state[b, s] = embeddings[input_ids[b, s]].
const HIDDEN = 4;
const EMBEDDINGS = seededFloats(VOCAB.length * HIDDEN, 11);
const MODEL_ONNX = Buffer.from(
  encodeOnnxModel({
    name: "tiny-embed",
    inputs: [
      { name: "input_ids", datatype: "INT64", shape: ["batch", "seq"] },
      { name: "attention_mask", datatype: "INT64", shape: ["batch", "seq"] },
    ],
    outputs: [{ name: "last_hidden_state", datatype: "FP32", shape: ["batch", "seq", HIDDEN] }],
    initializers: [{ name: "embeddings", dims: [VOCAB.length, HIDDEN], values: EMBEDDINGS }],
    nodes: [{ opType: "Gather", inputs: ["embeddings", "input_ids"], outputs: ["last_hidden_state"] }],
  }),
);
const CONFIG = Buffer.from(
  JSON.stringify({ model_type: "bert", architectures: ["BertModel"], hidden_size: HIDDEN, vocab_size: VOCAB.length }),
);

/** The embedding rows of these token ids, flattened: what the model must output. */
const rows = (ids: number[]) => ids.flatMap((id) => Array.from(EMBEDDINGS.subarray(id * HIDDEN, (id + 1) * HIDDEN)));

/** Asserts two float lists are equal to float32 precision. */
function assertClose(actual: ArrayLike<number>, expected: number[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i]! - expected[i]!) < 1e-6,
      `${what}[${i}]: ${String(actual[i])} != ${String(expected[i])}`,
    );
  }
}

/** One exchange transformers.js made, as the mirror answered it. */
interface Seen {
  url: string;
  method: string;
  range: string | null;
  status: number;
  headers: Headers;
}

/** Every file under a folder, by path relative to it. */
async function filesUnder(root: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = join(entry.parentPath, entry.name);
    out.set(full.slice(root.length + 1), await readFile(full));
  }
  return out;
}

/** What {@link freshClient} reports. */
interface FreshRun {
  ids: number[];
  hidden: number[];
  dims: number[];
  seen: Array<{ url: string; method: string; range: string | null; status: number; commit: string | null }>;
}

// The same library in a new process (no in-memory state of the first loads), its cache empty.
const FRESH_CLIENT = `
import { AutoTokenizer, env, pipeline } from "@huggingface/transformers";
const [edgeUrl, cacheDir] = process.argv.slice(1);
env.remoteHost = edgeUrl + "/";
env.allowLocalModels = false;
env.cacheDir = cacheDir;
const seen = [];
const fetchDefault = env.fetch;
env.fetch = async (input, init) => {
  const response = await fetchDefault(input, init);
  seen.push({ url: String(input), method: init?.method ?? "GET", range: new Headers(init?.headers).get("range"),
    status: response.status, commit: response.headers.get("x-repo-commit") });
  return response;
};
const tokenizer = await AutoTokenizer.from_pretrained("acme/tiny-tokenizer");
const ids = tokenizer.encode("near hub");
const extractor = await pipeline("feature-extraction", "acme/tiny-embed");
const hidden = await extractor("hello hub");
await extractor.dispose();
console.log(JSON.stringify({ ids, hidden: Array.from(hidden.data), dims: hidden.dims, seen }));
`;

/** Runs transformers.js in a child process against the mirror; rejects with its stderr on failure. */
function freshClient(edgeUrl: string, cacheDir: string): Promise<FreshRun> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--input-type=module", "-e", FRESH_CLIENT, edgeUrl, cacheDir],
      { cwd: ROOT, timeout: 120_000, maxBuffer: 16 << 20 },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`transformers.js in a child process failed: ${error.message}\n${stderr}`));
        else resolve(JSON.parse(stdout.trim().split("\n").at(-1)!) as FreshRun);
      },
    );
  });
}

describe("transformers.js, unmodified, through the mirror (env.remoteHost)", { timeout: 240_000 }, () => {
  const ns = uniqueNamespace("tjs");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let hub: HubDouble;
  let storage: ServiceHost;
  let edge: Edge;
  let edgeUrl: string;
  let tokenizerSha: string;
  let embedSha: string;
  const seen: Seen[] = [];
  let cacheDir: string;
  const defaultFetch = env.fetch;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-tjs-");
    hub = await startHubDouble();
    tokenizerSha = hub.commit("model", "acme/tiny-tokenizer", {
      "tokenizer.json": TOKENIZER_JSON,
      "tokenizer_config.json": TOKENIZER_CONFIG,
    });
    embedSha = hub.commit("model", "acme/tiny-embed", {
      "config.json": CONFIG,
      "tokenizer.json": TOKENIZER_JSON,
      "tokenizer_config.json": TOKENIZER_CONFIG,
      "onnx/model.onnx": { content: MODEL_ONNX, lfs: true },
    });
    // transformers.js never sends a token to a mirror: the operator lets anyone read models.
    const base = { ...serviceEnv(natsUrl, ns, dir.path), NEARHUB_ANONYMOUS_READ: "models/*" };
    storage = await startStorage(parseEnv("storage", storageEnv, base));
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...base,
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_HF_UPSTREAM: hub.url,
        NEARHUB_HF_REF_TTL_MS: "300",
        NEARHUB_HF_UPSTREAM_TIMEOUT_MS: "2000",
      }),
    );
    edgeUrl = `http://127.0.0.1:${edge.httpPort}`;

    env.remoteHost = `${edgeUrl}/`;
    env.allowLocalModels = false;
    env.allowRemoteModels = true;
    cacheDir = join(dir.path, "tjs-cache-1");
    env.cacheDir = cacheDir;
    // transformers.js lets the caller supply fetch; this one only records what it sent and got.
    env.fetch = async (input: string | URL, init?: RequestInit): Promise<Response> => {
      const response = (await defaultFetch(input, init)) as Response;
      const headers = new Headers(init?.headers);
      seen.push({
        url: String(input),
        method: init?.method ?? "GET",
        range: headers.get("range"),
        status: response.status,
        headers: response.headers,
      });
      return response;
    };
  });

  after(async () => {
    env.fetch = defaultFetch;
    await edge?.stop();
    await storage?.stop();
    await hub?.stop().catch(() => undefined);
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  /** Lists the exchanges in the test's output (which URLs transformers.js asks for). */
  const report = (t: { diagnostic: (message: string) => void }, from: number) => {
    for (const s of seen.slice(from)) {
      t.diagnostic(`${s.method} ${s.url.slice(edgeUrl.length)}${s.range ? ` (Range: ${s.range})` : ""} → ${s.status}`);
    }
  };

  test("AutoTokenizer.from_pretrained('acme/tiny-tokenizer') pulls the files through the edge and encodes", async (t) => {
    const tokenizer = await AutoTokenizer.from_pretrained("acme/tiny-tokenizer");
    assert.deepEqual(tokenizer.encode("Hello world, near hub"), [1, 4, 5, 9, 6, 7, 2]);
    assert.deepEqual(tokenizer.encode("hello mirrors"), [1, 4, 0, 2], "unknown words map to [UNK]");
    assert.equal(tokenizer.decode([1, 4, 5, 2], { skip_special_tokens: true }), "hello world");

    report(t, 0);
    const asked = seen.filter((s) => s.url.includes("/acme/tiny-tokenizer/"));
    assert.ok(asked.length >= 2, "transformers.js asked the mirror for the tokenizer files");
    for (const s of asked) {
      assert.ok(s.url.startsWith(`${edgeUrl}/acme/tiny-tokenizer/resolve/main/`), `${s.url} goes to the mirror`);
      assert.equal(s.headers.get("x-repo-commit"), tokenizerSha);
      assert.ok([200, 206].includes(s.status), `${s.url} answered ${s.status}`);
    }
    const json = asked.find((s) => s.url.endsWith("/tokenizer.json") && s.range === null);
    assert.equal(json?.status, 200);
    assert.equal(json?.headers.get("etag"), `"${gitSha1(TOKENIZER_JSON)}"`, "non-LFS files carry the git blob sha1");
    assert.equal(json?.headers.get("content-length"), String(TOKENIZER_JSON.length));
    // The size probe transformers.js sends (Range: bytes=0-0) gets a 206 with the full size.
    const probe = asked.find((s) => s.range === "bytes=0-0");
    assert.ok(probe, "transformers.js probed a file's size with Range: bytes=0-0");
    assert.equal(probe.status, 206);
    const probed = probe.url.endsWith("/tokenizer_config.json") ? TOKENIZER_CONFIG : TOKENIZER_JSON;
    assert.equal(probe.headers.get("content-range"), `bytes 0-0/${probed.length}`);

    const cached = await filesUnder(cacheDir);
    assert.equal(sha256(cached.get("acme/tiny-tokenizer/tokenizer.json")!), sha256(TOKENIZER_JSON));
    assert.equal(sha256(cached.get("acme/tiny-tokenizer/tokenizer_config.json")!), sha256(TOKENIZER_CONFIG));
  });

  test("AutoModel and a feature-extraction pipeline run onnx/model.onnx (an LFS file) pulled through the edge", async (t) => {
    const before = seen.length;
    const tokenizer = await AutoTokenizer.from_pretrained("acme/tiny-embed");
    const model = await AutoModel.from_pretrained("acme/tiny-embed");
    try {
      const inputs = tokenizer("near hub models");
      const output = (await model(inputs)) as { last_hidden_state: Tensor };
      assert.deepEqual(output.last_hidden_state.dims, [1, 5, HIDDEN]);
      assertClose(output.last_hidden_state.data as Float32Array, rows([1, 6, 7, 8, 2]), "last_hidden_state");
    } finally {
      await model.dispose();
    }
    const extractor = await pipeline("feature-extraction", "acme/tiny-embed");
    try {
      const pooled = await extractor("hello world", { pooling: "mean" });
      const ids = [1, 4, 5, 2];
      const mean = Array.from(
        { length: HIDDEN },
        (_, j) => ids.reduce((sum, id) => sum + EMBEDDINGS[id * HIDDEN + j]!, 0) / ids.length,
      );
      assert.deepEqual(pooled.dims, [1, HIDDEN]);
      assertClose(pooled.data as Float32Array, mean, "mean-pooled embedding");
    } finally {
      await extractor.dispose();
    }

    report(t, before);
    const onnx = seen.slice(before).find((s) => s.url === `${edgeUrl}/acme/tiny-embed/resolve/main/onnx/model.onnx`);
    assert.ok(onnx, "transformers.js asked the mirror for onnx/model.onnx");
    assert.equal(onnx.status, 200);
    assert.equal(onnx.headers.get("x-repo-commit"), embedSha);
    assert.equal(onnx.headers.get("etag"), `"${sha256(MODEL_ONNX)}"`, "LFS files carry the sha256");
    assert.equal(onnx.headers.get("x-linked-size"), String(MODEL_ONNX.length));
    assert.equal(hub.transfers(sha256(MODEL_ONNX)), 1, "one upstream transfer of the model");
    const cached = await filesUnder(cacheDir);
    assert.equal(sha256(cached.get("acme/tiny-embed/onnx/model.onnx")!), sha256(MODEL_ONNX));
  });

  test("a repo the upstream does not have fails as against the hub: its 401 RepoNotFound passed through", async () => {
    await assert.rejects(AutoTokenizer.from_pretrained("acme/no-such-model"), (error: Error) => {
      assert.match(error.message, /Unauthorized access to file.*acme\/no-such-model/);
      return true;
    });
    const miss = seen.find((s) => s.url.includes("/acme/no-such-model/"));
    assert.equal(miss?.status, 401, "anonymous requests for an unknown repo get 401, as huggingface.co answers");
    assert.equal(miss?.headers.get("x-error-code"), "RepoNotFound");
  });

  test("offline: upstream stopped, a new process with a fresh cacheDir loads the tokenizer and runs the model", async (t) => {
    await hub.stop();
    const requestsBefore = hub.requests();
    const out = await freshClient(edgeUrl, join(dir.path, "tjs-cache-2"));
    for (const s of out.seen)
      t.diagnostic(`${s.method} ${s.url.slice(edgeUrl.length)}${s.range ? ` (Range: ${s.range})` : ""} → ${s.status}`);
    assert.deepEqual(out.ids, [1, 6, 7, 2]);
    assertClose(out.hidden, rows([1, 4, 7, 2]), "last_hidden_state offline");
    assert.deepEqual(out.dims, [1, 4, HIDDEN]);
    for (const [repo, file, commit] of [
      ["acme/tiny-tokenizer", "tokenizer.json", tokenizerSha],
      ["acme/tiny-embed", "onnx/model.onnx", embedSha],
    ] as const) {
      const s = out.seen.find((x) => x.url === `${edgeUrl}/${repo}/resolve/main/${file}` && x.range === null);
      assert.equal(s?.status, 200, `${repo}/${file} downloaded again from the mirror`);
      assert.equal(s?.commit, commit, "the last known commit of main, served without the upstream");
    }
    const probe = out.seen.find((x) => x.range === "bytes=0-0");
    assert.equal(probe?.status, 206, "the size probe is answered from the mirror alone");
    const cached = await filesUnder(join(dir.path, "tjs-cache-2"));
    assert.equal(sha256(cached.get("acme/tiny-embed/onnx/model.onnx")!), sha256(MODEL_ONNX));
    assert.equal(sha256(cached.get("acme/tiny-tokenizer/tokenizer.json")!), sha256(TOKENIZER_JSON));
    assert.equal(hub.requests(), requestsBefore, "the stopped upstream answered nothing");
  });
});
