import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { spawn } from "node:child_process";
import { request } from "node:http";
import { connect as connectTcp } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { after, before, describe, test } from "node:test";
import {
  downloadFile,
  fileDownloadInfo,
  listFiles,
  modelInfo,
  pathsInfo,
  snapshotDownload,
  datasetInfo,
} from "@huggingface/hub";
import { Names, createClient, parseEnv, type ServiceHost } from "@nearhub/platform";
import { RepoKind, RegistryService } from "@nearhub/proto/registry";
import { StorageService } from "@nearhub/proto/storage";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { startStorage, storageEnv } from "@nearhub/storage";
import { startSync, syncEnv } from "@nearhub/sync";
import {
  adminAuth,
  adminToken,
  deleteNamespace,
  eventually,
  nats,
  serviceEnv,
  tempDir,
  uniqueNamespace,
} from "./harness.js";
import { sha256Hex, startHubDouble, type HubDouble } from "@nearhub/testing";

const MiB = 1024 * 1024;
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** A raw HTTP exchange (what huggingface_hub sends), headers and body as received. */
function raw(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    // Parsed by hand: `new URL` would normalise `..` segments before they reach the edge.
    const m = /^http:\/\/([^/:]+):(\d+)(\/.*)$/.exec(url);
    if (!m) throw new Error(`not an http URL: ${url}`);
    const target = { host: m[1], port: Number(m[2]), path: m[3] };
    const req = request({ ...target, method: options.method ?? "GET", headers: options.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const gitSha1 = (b: Uint8Array) => createHash("sha1").update(`blob ${b.byteLength}\0`).update(b).digest("hex");

describe("Hugging Face mirror: unmodified clients through the edge", () => {
  const ns = uniqueNamespace("hf");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let hub: HubDouble;
  let storage: ServiceHost;
  let edge: Edge;
  let edgeUrl: string;
  const weights = randomBytes(3 * MiB + 17);
  const safetensors = randomBytes(5 * MiB + 1);
  const config = Buffer.from(JSON.stringify({ model_type: "bert", hidden_size: 8 }));
  const nested = Buffer.from("nested tokenizer data\n");
  let mainSha: string;
  let gpt2Sha: string;
  let registry: ReturnType<typeof createClient<typeof RegistryService>>;
  let storageClient: ReturnType<typeof createClient<typeof StorageService>>;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-hf-");
    hub = await startHubDouble();
    mainSha = hub.commit(
      "model",
      "acme/tiny-bert",
      {
        "config.json": config,
        "README.md": "---\nlicense: mit\n---\n# tiny\n",
        "empty.txt": "",
        "model.safetensors": { content: safetensors, lfs: true },
        "sub/dir/weights.bin": { content: weights, lfs: true },
        "sub/tokenizer.txt": nested,
      },
      {
        card: { pipeline_tag: "fill-mask", library_name: "transformers", tags: ["bert"], cardData: { license: "mit" } },
      },
    );
    gpt2Sha = hub.commit("model", "gpt2", {
      "config.json": '{"n_layer":1}',
      "vocab.bin": { content: randomBytes(4096), lfs: true },
    });
    hub.commit("model", "acme/gated", { "config.json": "{}" }, { gatedToken: "mirror-credential" });
    hub.commit("model", "other/gated", { "config.json": "{}" }, { gatedToken: "someone-else" });
    hub.commit("dataset", "acme/squad", {
      "data/train.csv": "a,b\n1,2\n",
      "data/test.csv": { content: randomBytes(1000), lfs: true },
    });
    hub.commit("model", "acme/tiny-bert", { "config.json": '{"pr":1}' }, { branch: "refs/pr/1" });

    // HF clients read anonymously (transformers.js never sends a token): the operator allows it.
    const env = { ...serviceEnv(natsUrl, ns, dir.path), NEARHUB_ANONYMOUS_READ: "models/*,datasets/*,spaces/*" };
    storage = await startStorage(parseEnv("storage", storageEnv, env));
    registry = createClient(RegistryService, `127.0.0.1:${storage.grpcPort}`, { metadata: adminAuth(ns) });
    storageClient = createClient(StorageService, `127.0.0.1:${storage.grpcPort}`, { metadata: adminAuth(ns) });
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...env,
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_HF_UPSTREAM: hub.url,
        NEARHUB_HF_TOKEN: "mirror-credential",
        NEARHUB_HF_REF_TTL_MS: "300",
        NEARHUB_HF_UPSTREAM_TIMEOUT_MS: "2000",
      }),
    );
    edgeUrl = `http://127.0.0.1:${edge.httpPort}`;
  });

  after(async () => {
    registry?.$close();
    storageClient?.$close();
    await edge?.stop();
    await storage?.stop();
    await hub?.stop().catch(() => undefined);
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("HEAD as huggingface_hub sends it: every header, LFS and non-LFS, no Xet signal", async () => {
    const headers = { "accept-encoding": "identity", "user-agent": "huggingface_hub/0.30" };
    const lfs = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/model.safetensors`, { method: "HEAD", headers });
    assert.equal(lfs.status, 200);
    assert.equal(lfs.headers["x-repo-commit"], mainSha);
    assert.equal(lfs.headers["etag"], `"${sha256(safetensors)}"`);
    assert.equal(lfs.headers["x-linked-etag"], `"${sha256(safetensors)}"`);
    assert.equal(lfs.headers["x-linked-size"], String(safetensors.length));
    assert.equal(lfs.headers["content-length"], String(safetensors.length));
    assert.equal(lfs.headers["accept-ranges"], "bytes");
    assert.equal(lfs.headers["content-encoding"], undefined);
    for (const name of Object.keys(lfs.headers)) assert.doesNotMatch(name, /xet/i);
    assert.equal(lfs.headers["link"], undefined);

    const small = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/config.json`, { method: "HEAD", headers });
    assert.equal(small.status, 200);
    assert.equal(small.headers["etag"], `"${gitSha1(config)}"`);
    assert.equal(small.headers["x-repo-commit"], mainSha);

    // Revision percent-encoded, as huggingface_hub sends refs/pr/N.
    const pr = await raw(`${edgeUrl}/acme/tiny-bert/resolve/refs%2Fpr%2F1/config.json`, { headers });
    assert.equal(pr.status, 200);
    assert.equal(pr.body.toString(), '{"pr":1}');
    assert.notEqual(pr.headers["x-repo-commit"], mainSha);

    // HEAD as a revision means the default branch.
    const headRev = await raw(`${edgeUrl}/acme/tiny-bert/resolve/HEAD/sub/tokenizer.txt`, { headers });
    assert.equal(headRev.status, 200);
    assert.deepEqual(headRev.body, nested);
  });

  test("@huggingface/hub: downloadFile, fileDownloadInfo, listFiles, modelInfo, pathsInfo (cold, then warm)", async () => {
    const info = await fileDownloadInfo({ repo: "acme/tiny-bert", path: "sub/dir/weights.bin", hubUrl: edgeUrl });
    assert.ok(info);
    assert.equal(info.size, weights.length);
    assert.equal(info.etag, `"${sha256(weights)}"`);
    assert.equal(info.xet, undefined);

    for (const pass of ["cold", "warm"]) {
      const blob = await downloadFile({ repo: "acme/tiny-bert", path: "sub/dir/weights.bin", hubUrl: edgeUrl });
      assert.ok(blob, pass);
      assert.equal(sha256(new Uint8Array(await blob.arrayBuffer())), sha256(weights), pass);
    }
    assert.equal(hub.transfers(sha256(weights)), 1, "the warm download never reached the upstream");

    const missing = await downloadFile({ repo: "acme/tiny-bert", path: "nope.bin", hubUrl: edgeUrl });
    assert.equal(missing, null);

    const files = [];
    for await (const f of listFiles({ repo: "acme/tiny-bert", recursive: true, hubUrl: edgeUrl })) files.push(f);
    const byPath = new Map(files.map((f) => [f.path, f]));
    assert.deepEqual([...byPath.keys()].sort(), [
      "README.md",
      "config.json",
      "empty.txt",
      "model.safetensors",
      "sub",
      "sub/dir",
      "sub/dir/weights.bin",
      "sub/tokenizer.txt",
    ]);
    assert.equal(byPath.get("sub")?.type, "directory");
    assert.deepEqual(byPath.get("model.safetensors")?.lfs?.oid, sha256(safetensors));
    assert.equal(byPath.get("config.json")?.oid, gitSha1(config));
    assert.equal(byPath.get("empty.txt")?.size, 0);
    assert.equal(byPath.get("empty.txt")?.oid, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    for (const f of files) assert.equal(f.xetHash, undefined);
    // The upstream's own tree for the same files names the same git oids.
    const upstreamTree = (await (
      await fetch(`${hub.url}/api/models/acme/tiny-bert/tree/main?recursive=true`)
    ).json()) as Array<{
      path: string;
      oid: string;
    }>;
    for (const u of upstreamTree) assert.equal(byPath.get(u.path)?.oid, u.oid, u.path);

    const model = await modelInfo({
      name: "acme/tiny-bert",
      hubUrl: edgeUrl,
      additionalFields: ["sha", "library_name"],
    });
    assert.equal(model.name, "acme/tiny-bert");
    assert.equal(model.task, "fill-mask");
    assert.equal(model.sha, mainSha);
    assert.equal(model.library_name, "transformers");
    assert.equal(model.private, false);

    const infos = await pathsInfo({
      repo: "acme/tiny-bert",
      paths: ["sub/dir/weights.bin", "sub", "absent"],
      hubUrl: edgeUrl,
      expand: true,
    });
    assert.deepEqual(infos.map((i) => i.path).sort(), ["sub", "sub/dir/weights.bin"]);
    assert.equal(infos.find((i) => i.path === "sub/dir/weights.bin")?.lfs?.oid, sha256(weights));

    const ds = await datasetInfo({ name: "acme/squad", hubUrl: edgeUrl, additionalFields: ["sha"] });
    assert.equal(ds.name, "acme/squad");
    const csv = await downloadFile({
      repo: { type: "dataset", name: "acme/squad" },
      path: "data/train.csv",
      hubUrl: edgeUrl,
    });
    assert.equal(await csv?.text(), "a,b\n1,2\n");
    const gpt2 = await downloadFile({ repo: "gpt2", path: "config.json", hubUrl: edgeUrl });
    assert.equal(await gpt2?.text(), '{"n_layer":1}');
  });

  test("snapshotDownload fills the client's cache with every file, hashes equal to the upstream's", async () => {
    const cache = join(dir.path, "client-cache");
    const folder = await snapshotDownload({ repo: "acme/tiny-bert", cacheDir: cache, hubUrl: edgeUrl });
    assert.ok(folder.endsWith(mainSha));
    assert.deepEqual(await readFile(join(folder, "sub/dir/weights.bin")), weights);
    assert.deepEqual(await readFile(join(folder, "model.safetensors")), safetensors);
    assert.deepEqual(await readFile(join(folder, "config.json")), config);
    assert.equal((await readFile(join(folder, "empty.txt"))).length, 0);
  });

  test("ranges: 0-0 probe, resume, suffix, 416, malformed, 1,000 ranges, zero-length files", async () => {
    const url = `${edgeUrl}/acme/tiny-bert/resolve/main/model.safetensors`;
    const probe = await raw(url, { headers: { range: "bytes=0-0" } });
    assert.equal(probe.status, 206);
    assert.equal(probe.headers["content-range"], `bytes 0-0/${safetensors.length}`);
    assert.deepEqual(probe.body, safetensors.subarray(0, 1));
    const resume = await raw(url, { headers: { range: `bytes=${MiB}-` } });
    assert.equal(resume.status, 206);
    assert.equal(resume.headers["content-range"], `bytes ${MiB}-${safetensors.length - 1}/${safetensors.length}`);
    assert.equal(sha256(resume.body), sha256(safetensors.subarray(MiB)));
    const suffix = await raw(url, { headers: { range: "bytes=-10" } });
    assert.equal(suffix.status, 206);
    assert.deepEqual(suffix.body, safetensors.subarray(-10));
    for (const bad of [
      `bytes=${safetensors.length}-`,
      "bytes=abc",
      "items=0-1",
      "bytes=5-2",
      Array.from({ length: 1000 }, (_, i) => `${i}-${i}`)
        .join(",")
        .replace(/^/, "bytes="),
    ]) {
      const r = await raw(url, { headers: { range: bad } });
      assert.equal(r.status, 416, bad.slice(0, 40));
      assert.equal(r.headers["content-range"], `bytes */${safetensors.length}`);
      assert.match(String(r.headers["x-error-message"]), /Range/);
    }
    const empty = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/empty.txt`, { headers: { range: "bytes=0-0" } });
    assert.equal(empty.status, 200);
    assert.equal(empty.body.length, 0);
    assert.equal(empty.headers["etag"], '"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"');
    const blob = await downloadFile({ repo: "acme/tiny-bert", path: "empty.txt", hubUrl: edgeUrl });
    assert.equal(blob?.size, 0);
  });

  test("cold miss: two concurrent clients share one upstream transfer; bytes flow before the file is complete", async () => {
    const big = randomBytes(8 * MiB);
    hub.commit("model", "acme/streamed", { "big.bin": { content: big, lfs: true } });
    const release = hub.hold(sha256(big));
    const url = `${edgeUrl}/acme/streamed/resolve/main/big.bin`;
    const first = await fetch(url);
    assert.equal(first.status, 200);
    const reader = first.body!.getReader();
    const chunk = await reader.read(); // arrives while the upstream still holds the second half
    assert.ok(chunk.value && chunk.value.length > 0);
    const second = fetch(url, { headers: { range: `bytes=${MiB}-` } });
    release();
    const parts = [Buffer.from(chunk.value)];
    for (let r = await reader.read(); !r.done; r = await reader.read()) parts.push(Buffer.from(r.value));
    assert.equal(sha256(Buffer.concat(parts)), sha256(big));
    const ranged = await second;
    assert.equal(ranged.status, 206);
    assert.equal(sha256(new Uint8Array(await ranged.arrayBuffer())), sha256(big.subarray(MiB)));
    assert.equal(hub.transfers(sha256(big)), 1, "one upstream transfer for both clients");
    // Committed to storage after verification.
    await eventually(
      async () => ((await storageClient.hasBlobs({ sha256: [sha256(big)] })).present.length === 1 ? true : undefined),
      10_000,
      "the blob in storage",
    );
  });

  test("a corrupted upstream byte fails the transfer loudly and nothing is stored", async () => {
    const data = randomBytes(2 * MiB);
    hub.commit("model", "acme/corrupt", { "w.bin": { content: data, lfs: true } });
    hub.corrupt(sha256(data));
    const res = await fetch(`${edgeUrl}/acme/corrupt/resolve/main/w.bin`);
    assert.equal(res.status, 200);
    await assert.rejects(res.arrayBuffer());
    assert.deepEqual((await storageClient.hasBlobs({ sha256: [sha256(data)] })).present, []);
    const cached = await readdir(join(dir.path, "hf-cache", "blobs"));
    assert.ok(!cached.includes(sha256(data)));
    await assert.rejects(
      downloadFile({ repo: "acme/corrupt", path: "w.bin", hubUrl: edgeUrl }).then((b) => b?.arrayBuffer()),
    );
  });

  test("HF errors: RepoNotFound, RevisionNotFound, EntryNotFound with X-Repo-Commit, gated repos, hostile paths", async () => {
    const unknown = await raw(`${edgeUrl}/acme/unknown/resolve/main/config.json`);
    assert.equal(unknown.headers["x-error-code"], "RepoNotFound");
    assert.ok([401, 404].includes(unknown.status));
    const rev = await raw(`${edgeUrl}/acme/tiny-bert/resolve/no-such-branch/config.json`);
    assert.equal(rev.status, 404);
    assert.equal(rev.headers["x-error-code"], "RevisionNotFound");
    const entry = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/absent.json`, { method: "HEAD" });
    assert.equal(entry.status, 404);
    assert.equal(entry.headers["x-error-code"], "EntryNotFound");
    assert.equal(entry.headers["x-repo-commit"], mainSha);
    const gated = await raw(`${edgeUrl}/acme/gated/resolve/main/config.json`);
    assert.equal(gated.status, 200, "the mirror's own credential opens the gated repo");
    const refused = await raw(`${edgeUrl}/other/gated/resolve/main/config.json`);
    assert.equal(refused.status, 401);
    assert.equal(refused.headers["x-error-code"], "GatedRepo");

    for (const path of [
      "/acme/tiny-bert/resolve/main/..%2F..%2Fetc%2Fpasswd",
      "/acme/tiny-bert/resolve/main/%2e%2e/%2e%2e/etc/passwd",
      "/acme/tiny-bert/resolve/main/sub/../config.json",
      "/acme/tiny-bert/resolve/main/%2Fetc%2Fpasswd",
      "/acme/tiny-bert/resolve/..%2F..%2Fx/config.json",
      "/%2e%2e/tiny-bert/resolve/main/config.json",
      "/api/models/..%2F..%2Fetc",
      "/api/models/acme/tiny-bert/tree/main/..%2Fsecret",
      "/api/models/acme/tiny-bert/revision/%ZZ",
    ]) {
      const r = await raw(`${edgeUrl}${path}`);
      assert.ok([400, 404].includes(r.status), `${path} → ${r.status}`);
      assert.notEqual(r.status, 200);
      assert.ok(JSON.parse(r.body.toString()).error, path);
    }
    const huge = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/config.json`, {
      headers: { "x-pad": "a".repeat(64 * 1024) },
    });
    assert.equal(huge.status, 431);
    assert.match((JSON.parse(huge.body.toString()) as { error: string }).error, /headers must total under 16 KiB/);
    const garbage = await new Promise<string>((resolve, reject) => {
      const socket = connectTcp(Number(new URL(edgeUrl).port), "127.0.0.1", () => socket.end("NOT HTTP\r\n\r\n"));
      let answer = "";
      socket.on("data", (d: Buffer) => (answer += d.toString()));
      socket.on("end", () => resolve(answer));
      socket.on("error", reject);
    });
    assert.match(garbage, /^HTTP\/1\.1 400 Bad Request/);
    assert.match(garbage, /"error":"the request is not valid HTTP\/1\.1/);
    await assert.rejects(registry.getRepo({ repo: { kind: RepoKind.MODEL, id: "acme/unknown" } }), /does not exist/);
  });

  test("tree pagination: Link points at the mirror; paths-info as a form (Python) and as JSON", async () => {
    const seen: string[] = [];
    let next: string | undefined = `${edgeUrl}/api/models/acme/tiny-bert/tree/main?recursive=true&limit=3`;
    while (next) {
      const r = await fetch(next);
      assert.equal(r.status, 200);
      seen.push(...((await r.json()) as Array<{ path: string }>).map((e) => e.path));
      const link = r.headers.get("link");
      next = link ? /<([^>]+)>; rel="next"/.exec(link)?.[1] : undefined;
      if (next) assert.ok(next.startsWith(edgeUrl), next);
    }
    assert.equal(seen.length, 8);
    assert.equal(new Set(seen).size, 8);
    const top = (await (await fetch(`${edgeUrl}/api/models/acme/tiny-bert/tree/main/sub`)).json()) as Array<{
      path: string;
    }>;
    assert.deepEqual(top.map((e) => e.path).sort(), ["sub/dir", "sub/tokenizer.txt"]);

    const form = await raw(`${edgeUrl}/api/models/acme/tiny-bert/paths-info/main`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "paths=config.json&paths=sub%2Fdir&paths=missing&expand=True",
    });
    assert.equal(form.status, 200);
    const items = JSON.parse(form.body.toString()) as Array<{ path: string; type: string; oid: string }>;
    assert.deepEqual(
      items.map((i) => [i.path, i.type]),
      [
        ["config.json", "file"],
        ["sub/dir", "directory"],
      ],
    );
    assert.equal(items[0]?.oid, gitSha1(config));

    const info = (await (await fetch(`${edgeUrl}/api/models/acme/tiny-bert/revision/main?blobs=true`)).json()) as {
      sha: string;
      siblings: Array<{ rfilename: string; size: number; blobId: string; lfs?: { sha256: string } }>;
    };
    assert.equal(info.sha, mainSha);
    assert.equal(info.siblings.find((s) => s.rfilename === "model.safetensors")?.lfs?.sha256, sha256(safetensors));
    assert.ok(!info.siblings.some((s) => s.rfilename.startsWith(".nearhub")));
    const expanded = (await (
      await fetch(`${edgeUrl}/api/models/acme/tiny-bert?expand=downloads&expand=pipeline_tag`)
    ).json()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(expanded).sort(), ["_id", "downloads", "id", "pipeline_tag"]);
  });

  test("whoami-v2 with nearhub tokens; CORS for browsers", async () => {
    const me = await raw(`${edgeUrl}/api/whoami-v2`, { headers: adminAuth(ns) });
    assert.equal(me.status, 200);
    assert.match((JSON.parse(me.body.toString()) as { name: string }).name, /^token:[0-9a-f]{16}$/);
    // A huggingface.co token is not ours: the caller is anonymous, and whoami says so.
    const foreign = await raw(`${edgeUrl}/api/whoami-v2`, {
      headers: { authorization: `Bearer hf_${"x".repeat(34)}` },
    });
    assert.equal(foreign.status, 401);
    assert.equal(
      (await raw(`${edgeUrl}/api/whoami-v2`, { headers: { authorization: "Bearer nh_bogus" } })).status,
      401,
    );
    const pre = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/config.json`, {
      method: "OPTIONS",
      headers: {
        origin: "http://app.local",
        "access-control-request-method": "GET",
        "access-control-request-headers": "range",
      },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers["access-control-allow-origin"], "http://app.local");
    const get = await raw(`${edgeUrl}/acme/tiny-bert/resolve/main/config.json`, {
      headers: { origin: "http://app.local" },
    });
    const exposed = String(get.headers["access-control-expose-headers"]);
    for (const h of ["Content-Range", "ETag", "X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size"])
      assert.ok(exposed.includes(h), h);
  });

  test("main moves upstream: after the TTL the mirror serves the new commit; the old one stays pinned", async () => {
    const newSha = hub.commit("model", "gpt2", {
      "config.json": '{"n_layer":2}',
      "vocab.bin": { content: randomBytes(10), lfs: true },
    });
    const body = await eventually(
      async () => {
        const r = await raw(`${edgeUrl}/gpt2/resolve/main/config.json`);
        return r.headers["x-repo-commit"] === newSha ? r.body.toString() : undefined;
      },
      10_000,
      "the new commit of main",
    );
    assert.equal(body, '{"n_layer":2}');
    const old = await raw(`${edgeUrl}/gpt2/resolve/${gpt2Sha}/config.json`);
    assert.equal(old.headers["x-repo-commit"], gpt2Sha);
    assert.equal(old.body.toString(), '{"n_layer":1}');
  });

  test("offline: upstream stopped → stored repos still download (cache and storage), an unstored one fails clearly", async () => {
    await edgeIdle();
    await hub.stop();
    const blob = await downloadFile({ repo: "acme/tiny-bert", path: "model.safetensors", hubUrl: edgeUrl });
    assert.equal(sha256(new Uint8Array(await blob!.arrayBuffer())), sha256(safetensors));
    const model = await modelInfo({ name: "acme/tiny-bert", hubUrl: edgeUrl, additionalFields: ["sha"] });
    assert.equal(model.sha, mainSha);
    const pinned = await raw(`${edgeUrl}/acme/tiny-bert/resolve/${mainSha}/config.json`);
    assert.equal(pinned.status, 200);
    const none = await raw(`${edgeUrl}/acme/never-seen/resolve/main/config.json`);
    assert.equal(none.status, 504);
    assert.match((JSON.parse(none.body.toString()) as { error: string }).error, /unreachable.*not stored here yet/);

    // A second edge with an empty hot cache and no upstream serves the same from storage.
    const other = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...serviceEnv(natsUrl, ns, join(dir.path, "edge2")),
        NEARHUB_ANONYMOUS_READ: "models/*,datasets/*,spaces/*",
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_HF_UPSTREAM: "off",
      }),
    );
    try {
      const url2 = `http://127.0.0.1:${other.httpPort}`;
      const w = await downloadFile({ repo: "acme/tiny-bert", path: "sub/dir/weights.bin", hubUrl: url2 });
      assert.equal(sha256(new Uint8Array(await w!.arrayBuffer())), sha256(weights));
      const files = [];
      for await (const f of listFiles({ repo: "acme/tiny-bert", recursive: true, hubUrl: url2 })) files.push(f.path);
      assert.equal(files.length, 8);
      const missing = await raw(`${url2}/acme/never-seen/resolve/main/x`);
      assert.equal(missing.status, 404);
      assert.equal(missing.headers["x-error-code"], "RepoNotFound");
    } finally {
      await other.stop();
    }
  });

  /** Waits until every blob pulled so far is committed to storage. */
  async function edgeIdle(): Promise<void> {
    for (const data of [weights, safetensors]) {
      await eventually(
        async () =>
          (await storageClient.hasBlobs({ sha256: [sha256Hex(data)] })).present.length === 1 ? true : undefined,
        10_000,
        "blob in storage",
      );
    }
  }
});

/** Runs the real `nearhub` CLI: exit code and output. */
function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--conditions=development", "--import", "tsx", join(ROOT, "packages/cli/src/bin.ts"), ...args],
      { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe("nearhub model add: scheduled snapshots into the registry, include/exclude, drift, events", () => {
  const ns = uniqueNamespace("hfm");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let hub: HubDouble;
  let storage: ServiceHost;
  let sync: ServiceHost;
  let edge: Edge;
  let edgeUrl: string;
  let storageClient: ReturnType<typeof createClient<typeof StorageService>>;
  const safetensors = randomBytes(2 * MiB);
  const onnx = randomBytes(MiB);
  const skipped = randomBytes(MiB);
  const pt = randomBytes(MiB);
  let sha1: string;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-hfm-");
    hub = await startHubDouble();
    sha1 = hub.commit("model", "acme/mirrored", {
      "config.json": '{"v":1}',
      "model.safetensors": { content: safetensors, lfs: true },
      "onnx/model.onnx": { content: onnx, lfs: true },
      "onnx/skip-me.onnx": { content: skipped, lfs: true },
      "pytorch_model.bin": { content: pt, lfs: true },
    });
    const env = serviceEnv(natsUrl, ns, dir.path, {
      NEARHUB_GIT_UPSTREAMS: "github.com=http://127.0.0.1:1",
      // Downloads are anonymous, as from transformers.js; managing mirrors takes the admin token.
      NEARHUB_ANONYMOUS_READ: "models/*",
    });
    storage = await startStorage(parseEnv("storage", storageEnv, env));
    storageClient = createClient(StorageService, `127.0.0.1:${storage.grpcPort}`, { metadata: adminAuth(ns) });
    sync = await startSync(
      parseEnv("sync", syncEnv, {
        ...env,
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_HF_UPSTREAM: hub.url,
        NEARHUB_HF_MIRROR_TICK_MS: "100",
      }),
    );
    // The edge has no upstream: what it serves comes from the mirror's snapshots.
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...env,
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_SYNC_ADDR: `127.0.0.1:${sync.grpcPort}`,
        NEARHUB_HF_UPSTREAM: "off",
      }),
    );
    edgeUrl = `http://127.0.0.1:${edge.httpPort}`;
  });

  after(async () => {
    storageClient?.$close();
    await edge?.stop();
    await sync?.stop();
    await storage?.stop();
    await hub?.stop();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  const stored = async (data: Buffer) =>
    (await storageClient.hasBlobs({ sha256: [sha256(data)] })).present.length === 1;

  test("add → first snapshot: selected LFS files stored, the rest served lazily, event published", async () => {
    const env = { NEARHUB_URL: edgeUrl, NEARHUB_TOKEN: adminToken(ns) };
    const added = await cli(
      [
        "model",
        "add",
        "acme/mirrored",
        "--include",
        "*.safetensors,onnx/*,*.json",
        "--exclude",
        "onnx/skip*",
        "--interval",
        "1h",
      ],
      env,
    );
    assert.equal(added.code, 0, added.stderr);
    assert.match(added.stdout, /added: acme\/mirrored@main/);

    const mirror = await eventually(
      async () => {
        const r = (await (
          await fetch(`${edgeUrl}/api/model-mirrors/model/acme/mirrored`, { headers: adminAuth(ns) })
        ).json()) as {
          mirroredCommit?: string;
          fileCount: number;
        };
        return r.mirroredCommit === sha1 ? r : undefined;
      },
      20_000,
      "the first snapshot",
    );
    assert.equal(mirror.fileCount, 5);
    assert.ok(await stored(safetensors));
    assert.ok(await stored(onnx));
    assert.ok(!(await stored(skipped)), "excluded");
    assert.ok(!(await stored(pt)), "not included");

    const w = await downloadFile({ repo: "acme/mirrored", path: "model.safetensors", hubUrl: edgeUrl });
    assert.equal(sha256(new Uint8Array(await w!.arrayBuffer())), sha256(safetensors));
    const head = await raw(`${edgeUrl}/acme/mirrored/resolve/main/config.json`, { method: "HEAD" });
    assert.equal(head.headers["x-repo-commit"], sha1);
    // Listed (metadata is complete) but not fetched, and this edge has no upstream.
    const lazy = await raw(`${edgeUrl}/acme/mirrored/resolve/main/pytorch_model.bin`);
    assert.equal(lazy.status, 503);

    const nc = await connect({ servers: natsUrl });
    try {
      const names = new Names(ns);
      const jsm = await jetstreamManager(nc);
      const message = await jsm.streams.getMessage(names.stream("EVENTS"), {
        last_by_subj: names.eventSubject("mirror", "model.synced"),
      });
      const event = JSON.parse(new TextDecoder().decode(message!.data)) as { repo: { id: string }; commit: string };
      assert.equal(event.repo.id, "acme/mirrored");
      assert.equal(event.commit, sha1);
    } finally {
      await nc.close();
    }

    const list = await cli(["model", "list"], env);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /acme\/mirrored@main\s+ok\s+/);
  });

  test("a new upstream commit that fails verification shows as drift; a good one is mirrored", async () => {
    const env = { NEARHUB_URL: edgeUrl, NEARHUB_TOKEN: adminToken(ns) };
    const bad = randomBytes(MiB);
    const sha2 = hub.commit("model", "acme/mirrored", {
      "config.json": '{"v":2}',
      "model.safetensors": { content: bad, lfs: true },
    });
    hub.corrupt(sha256(bad));
    const synced = await cli(["model", "sync", "acme/mirrored", "--json"], env);
    assert.equal(synced.code, 1, synced.stdout);
    const failed = JSON.parse(synced.stdout) as {
      drift: boolean;
      mirroredCommit: string;
      upstreamCommit: string;
      lastError: string;
    };
    assert.equal(failed.drift, true);
    assert.equal(failed.mirroredCommit, sha1);
    assert.equal(failed.upstreamCommit, sha2);
    assert.match(failed.lastError, /sha256|hash|match/i);
    assert.ok(!(await stored(bad)));
    const list = await cli(["model", "list"], env);
    assert.equal(list.code, 3, "drift is exit code 3");
    assert.match(list.stdout, /drift/);
    // The edge still serves the last good commit.
    assert.equal((await raw(`${edgeUrl}/acme/mirrored/resolve/main/config.json`)).body.toString(), '{"v":1}');

    const good = randomBytes(MiB);
    const sha3 = hub.commit("model", "acme/mirrored", {
      "config.json": '{"v":3}',
      "model.safetensors": { content: good, lfs: true },
    });
    const ok = await cli(["model", "sync", "acme/mirrored", "--json"], env);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.equal((JSON.parse(ok.stdout) as { mirroredCommit: string }).mirroredCommit, sha3);
    assert.ok(await stored(good));
  });

  test("hostile input: invalid repo ids, intervals and unknown mirrors get the right status", async () => {
    const post = (body: unknown) =>
      raw(`${edgeUrl}/api/model-mirrors`, {
        method: "POST",
        headers: { "content-type": "application/json", ...adminAuth(ns) },
        body: JSON.stringify(body),
      });
    assert.equal((await post({ repo: "../../etc" })).status, 400);
    assert.equal((await post({ repo: "a/b/c" })).status, 400);
    assert.equal((await post({ repo: "acme/x", intervalSeconds: 5 })).status, 400);
    assert.equal((await post({ repo: "acme/x", kind: "bucket" })).status, 400);
    assert.equal((await post({ repo: "acme/x", include: [1] })).status, 400);
    assert.equal((await raw(`${edgeUrl}/api/model-mirrors/model/acme/unknown`)).status, 404);
    assert.equal(
      (await raw(`${edgeUrl}/api/model-mirrors/model/acme/unknown`, { method: "DELETE", headers: adminAuth(ns) }))
        .status,
      404,
    );
    // Managing mirrors is never anonymous.
    assert.equal((await raw(`${edgeUrl}/api/model-mirrors/model/acme/unknown`, { method: "DELETE" })).status, 401);
    const usage = await cli(["model", "add"], { NEARHUB_URL: edgeUrl, NEARHUB_TOKEN: adminToken(ns) });
    assert.equal(usage.code, 2);
    const removed = await cli(["model", "remove", "acme/mirrored"], {
      NEARHUB_URL: edgeUrl,
      NEARHUB_TOKEN: adminToken(ns),
    });
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal((await raw(`${edgeUrl}/api/model-mirrors/model/acme/mirrored`)).status, 404);
  });
});
