import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Code, createClient, parseEnv, type NearhubError } from "@nearhub/platform";
import { SyncService } from "@nearhub/proto/sync";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { serveGitHttpBackend, startSync, syncEnv, type HttpBackend, type SyncHandle } from "@nearhub/sync";
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
import { GIT_ENV, exec } from "./processes.js";

const run = promisify(execFile);
const root = fileURLToPath(new URL("..", import.meta.url));

async function git(args: string[], cwd?: string, env: Record<string, string> = {}) {
  const { stdout, stderr } = await run("git", args, { cwd, env: { ...GIT_ENV, ...env }, maxBuffer: 64 * 1024 * 1024 });
  return { stdout, stderr };
}

/** `git` that is expected to fail: its exit code and stderr. */
const gitFails = (args: string[], cwd?: string) => exec("git", args, cwd ? { cwd } : {});

/** Refs as `sha ref` lines, sorted, heads and tags only (peeled lines dropped). */
async function lsRemote(url: string, protocol = 2): Promise<string> {
  const { stdout } = await git(["-c", `protocol.version=${protocol}`, "ls-remote", "--heads", "--tags", url]);
  return stdout
    .split("\n")
    .filter((l) => l && !l.endsWith("^{}"))
    .sort()
    .join("\n");
}

/** The suite's namespace; the CLI acts as its administrator. */
const GIT_NS = uniqueNamespace("g");

/** The nearhub CLI, as a user runs it. */
const cli = (args: string[], edgeUrl: string) =>
  exec(
    process.execPath,
    ["--conditions=development", "--import", "tsx", "packages/cli/src/bin.ts", ...args, "--url", edgeUrl],
    {
      cwd: root,
      env: { ...process.env, NEARHUB_TOKEN: adminToken(GIT_NS) },
    },
  );

describe("git mirror: sync engine and serving through the edge with real git", () => {
  const ns = GIT_NS;
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let origin: HttpBackend;
  let sync: SyncHandle;
  let edge: Edge;
  let edgeUrl: string;
  let work: string;
  let originRoot: string;
  let dataDir: string;
  const trouble = new Map<string, "cut" | "401">();
  const SECRET = "s3cret-webhook";

  /** Creates `<originRoot>/<owner>/<repo>.git` with a few commits, branches and tags. */
  async function makeOrigin(owner: string, repo: string): Promise<string> {
    const bare = join(originRoot, owner, `${repo}.git`);
    await mkdir(join(originRoot, owner), { recursive: true });
    await git(["init", "--bare", "-q", "-b", "main", bare]);
    const wt = join(dir.path, "work", owner, repo);
    await git(["clone", "-q", bare, wt]);
    for (let i = 0; i < 3; i++) {
      await run("sh", ["-c", `echo line ${i} >> file.txt && head -c 20000 /dev/urandom > blob${i}.bin`], { cwd: wt });
      await git(["add", "."], wt);
      await git(["commit", "-q", "-m", `commit ${i}`], wt);
    }
    await git(["tag", "-a", "v1", "-m", "release 1"], wt);
    await git(["checkout", "-q", "-b", "feature"], wt);
    await run("sh", ["-c", "echo feature > feature.txt"], { cwd: wt });
    await git(["add", "."], wt);
    await git(["commit", "-q", "-m", "feature"], wt);
    await git(["push", "-q", "origin", "main", "feature", "v1"], wt);
    await git(["checkout", "-q", "main"], wt);
    return wt;
  }

  /** fetch as the namespace's administrator (the edge refuses anonymous writes). */
  const authFetch = (input: string, init: RequestInit = {}) =>
    fetch(input, { ...init, headers: { ...adminAuth(ns), ...(init.headers as Record<string, string> | undefined) } });

  const syncWait = async (name: string) => {
    const res = await authFetch(`${edgeUrl}/api/mirrors/${name}/sync?wait=1&timeout=60`, { method: "POST" });
    return { status: res.status, body: (await res.json()) as { finished: boolean; mirror: Record<string, unknown> } };
  };
  const metric = async (name: string): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${sync.metricsPort}/metrics`)).text();
    return text
      .split("\n")
      .filter((l) => l.startsWith(name))
      .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
  };

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-git-");
    originRoot = join(dir.path, "origin");
    dataDir = join(dir.path, "data");
    await mkdir(originRoot, { recursive: true });
    origin = await serveGitHttpBackend({
      root: originRoot,
      intercept: (req, res) => {
        const repo = /^\/([^/]+\/[^/]+?)(\.git)?\//.exec(req.url ?? "")?.[1] ?? "";
        const mode = trouble.get(repo);
        if (mode === "401") {
          res.writeHead(401, { "www-authenticate": 'Basic realm="origin"' }).end("no");
          return true;
        }
        if (mode === "cut" && req.method === "POST") {
          // Half a response, then the connection drops: the fetch dies mid-transfer.
          res.writeHead(200, { "content-type": "application/x-git-upload-pack-result" });
          res.write("0008NAK\n0023\u0001PACK\u0000\u0000\u0000\u0002\u0000\u0000\u0000\u0009partial");
          setTimeout(() => res.socket?.destroy(), 50);
          return true;
        }
        return false;
      },
    });
    work = await makeOrigin("acme", "rocket");
    const env = serviceEnv(natsUrl, ns, dataDir, {
      NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}`,
      NEARHUB_GIT_HTTP_PORT: "0",
      NEARHUB_GIT_SCHEDULER_TICK_MS: "500",
      NEARHUB_GIT_BACKOFF_S: "1",
      // Clones here are anonymous, as on a public mirror; changes carry the admin token.
      NEARHUB_ANONYMOUS_READ: "github.com/*",
    });
    sync = await startSync(parseEnv("sync", syncEnv, env));
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...env,
        NEARHUB_SYNC_ADDR: `127.0.0.1:${sync.grpcPort}`,
        NEARHUB_SYNC_GIT_URL: `http://127.0.0.1:${sync.gitHttpPort}`,
        NEARHUB_GITHUB_WEBHOOK_SECRET: SECRET,
        NEARHUB_GIT_PULL_THROUGH_ALLOW: "github.com/acme/*",
      }),
    );
    edgeUrl = `http://127.0.0.1:${edge.httpPort}`;
  });

  after(async () => {
    await edge?.stop();
    await sync?.stop();
    await origin?.close();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("mirror add → first sync → clone, ls-remote, --depth, --filter through the edge, v2 and v0", async () => {
    const added = await cli(["mirror", "add", "github.com/acme/rocket", "--interval", "1h"], edgeUrl);
    assert.equal(added.code, 0, added.stderr);
    assert.match(added.stdout, /added: github.com\/acme\/rocket/);
    const synced = await cli(["mirror", "sync", "github.com/acme/rocket", "--wait"], edgeUrl);
    assert.equal(synced.code, 0, synced.stderr);
    assert.match(synced.stdout, /in_sync/);

    const originUrl = `${origin.url}/acme/rocket.git`;
    const expected = await lsRemote(originUrl);
    for (const protocol of [2, 0]) {
      assert.equal(
        await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`, protocol),
        expected,
        `protocol v${protocol}`,
      );
      assert.equal(await lsRemote(`${edgeUrl}/github.com/acme/rocket`, protocol), expected, "without .git");
      const clone = join(dir.path, `clone-v${protocol}`);
      await git([
        "-c",
        `protocol.version=${protocol}`,
        "clone",
        "-q",
        "--mirror",
        `${edgeUrl}/github.com/acme/rocket.git`,
        clone,
      ]);
      const { stdout } = await git(["for-each-ref", "--format=%(objectname) %(refname)"], clone);
      const cloned = stdout
        .trim()
        .split("\n")
        .map((l) => l.replace(" ", "\t"))
        .sort()
        .join("\n");
      assert.equal(cloned, expected);
      await git(["fsck", "--no-progress"], clone);
    }
    const shallow = join(dir.path, "shallow");
    await git(["clone", "-q", "--depth", "1", `${edgeUrl}/github.com/acme/rocket.git`, shallow]);
    assert.equal((await git(["rev-list", "--count", "HEAD"], shallow)).stdout.trim(), "1");
    const partial = join(dir.path, "partial");
    await git(["clone", "-q", "--filter=blob:none", `${edgeUrl}/github.com/acme/rocket.git`, partial]);
    assert.equal((await git(["config", "remote.origin.partialclonefilter"], partial)).stdout.trim(), "blob:none");
    assert.ok(existsSync(join(partial, "blob2.bin")), "the checkout fetched its blobs on demand");
    // A gzip-encoded request body, as git sends for large negotiations.
    const want = expected.split("\n")[0]?.split("\t")[0] ?? "";
    const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, "0")}${s}`;
    const body = gzipSync(Buffer.from(`${pkt(`want ${want}\n`)}0000${pkt("done\n")}`));
    const res = await authFetch(`${edgeUrl}/github.com/acme/rocket.git/git-upload-pack`, {
      method: "POST",
      headers: { "content-type": "application/x-git-upload-pack-request", "content-encoding": "gzip" },
      body,
    });
    assert.equal(res.status, 200);
    assert.match(Buffer.from(await res.arrayBuffer()).toString("latin1"), /PACK/);
  });

  test("push through the edge is refused with 403 and a message", async () => {
    const r = await gitFails(["push", `${edgeUrl}/github.com/acme/rocket.git`, "main:refs/heads/evil"], work);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /read-only mirror/);
    const res = await authFetch(`${edgeUrl}/github.com/acme/rocket.git/info/refs?service=git-receive-pack`);
    assert.equal(res.status, 403);
  });

  test("no-op sync skips the fetch; new commits, force-push and deletion are synced, old tips archived", async () => {
    const noopsBefore = await metric("nearhub_git_sync_noop_total");
    const fetchesBefore = origin.fetches.get("/acme/rocket.git") ?? 0;
    assert.equal((await syncWait("github.com/acme/rocket")).status, 202);
    assert.equal(await metric("nearhub_git_sync_noop_total"), noopsBefore + 1);
    assert.equal(origin.fetches.get("/acme/rocket.git") ?? 0, fetchesBefore, "no fetch on a no-op");

    const oldFeature = (await git(["rev-parse", "origin/feature"], work)).stdout.trim();
    await run("sh", ["-c", "echo more >> file.txt"], { cwd: work });
    await git(["commit", "-q", "-am", "more"], work);
    await git(["push", "-q", "origin", "main"], work);
    await git(["push", "-q", "origin", "--delete", "feature"], work);
    // A branch the mirror has seen, then rewritten (force-pushed) upstream.
    await git(["push", "-q", "origin", "main:refs/heads/rewrite"], work);
    assert.equal((await syncWait("github.com/acme/rocket")).body.finished, true);
    const oldRewrite = (await git(["rev-parse", "HEAD"], work)).stdout.trim();
    await git(["checkout", "-q", "-b", "rewrite"], work);
    await git(["commit", "-q", "--amend", "-m", "rewritten"], work);
    await git(["push", "-q", "-f", "origin", "rewrite"], work);
    await git(["checkout", "-q", "main"], work);
    const { status, body } = await syncWait("github.com/acme/rocket");
    assert.equal(status, 202);
    assert.equal(body.finished, true);
    assert.equal(
      await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`),
      await lsRemote(`${origin.url}/acme/rocket.git`),
    );
    const packed = readFileSync(
      join(dataDir, "git", "repos", "github.com", "acme", "rocket.git", "packed-refs"),
      "utf8",
    );
    assert.match(packed, new RegExp(`${oldFeature} refs/archive/\\d+/heads/feature`));
    assert.match(packed, new RegExp(`${oldRewrite} refs/archive/\\d+/heads/rewrite`));
    // The archived tip is still fetchable by sha from the edge.
    const fresh = join(dir.path, "archive-fetch");
    await git(["init", "-q", fresh]);
    await git(["fetch", "-q", `${edgeUrl}/github.com/acme/rocket.git`, oldFeature], fresh);
    assert.equal((await git(["cat-file", "-t", oldFeature], fresh)).stdout.trim(), "commit");
  });

  test("a sync cut off mid-fetch leaves the served repository intact and no staging left", async () => {
    const servedBefore = await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`);
    await run("sh", ["-c", "echo cut >> file.txt"], { cwd: work });
    await git(["commit", "-q", "-am", "cut"], work);
    await git(["push", "-q", "origin", "main"], work);
    trouble.set("acme/rocket", "cut");
    try {
      const { body } = await syncWait("github.com/acme/rocket");
      assert.equal(body.mirror["state"], "MIRROR_STATE_FAILED");
      assert.ok(String(body.mirror["lastError"]).length > 0);
      assert.equal(await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`), servedBefore);
      const clone = join(dir.path, "after-cut");
      await git(["clone", "-q", `${edgeUrl}/github.com/acme/rocket.git`, clone]);
      await git(["fsck", "--no-progress"], clone);
      assert.deepEqual(readdirSync(join(dataDir, "git", "tmp")), []);
    } finally {
      trouble.delete("acme/rocket");
    }
    const { body } = await syncWait("github.com/acme/rocket");
    assert.equal(body.mirror["state"], "MIRROR_STATE_IN_SYNC");
    assert.equal(
      await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`),
      await lsRemote(`${origin.url}/acme/rocket.git`),
    );
  });

  test("webhook: a good signature syncs the pushed repository, a bad one is 401", async () => {
    await run("sh", ["-c", "echo hook >> file.txt"], { cwd: work });
    await git(["commit", "-q", "-am", "hook"], work);
    await git(["push", "-q", "origin", "main"], work);
    const payload = JSON.stringify({ ref: "refs/heads/main", repository: { full_name: "acme/rocket" } });
    const sign = (secret: string) => `sha256=${createHmac("sha256", secret).update(payload).digest("hex")}`;
    const bad = await authFetch(`${edgeUrl}/hooks/github`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-github-event": "push", "x-hub-signature-256": sign("wrong") },
      body: payload,
    });
    assert.equal(bad.status, 401);
    assert.match(((await bad.json()) as { error: string }).error, /X-Hub-Signature-256/);
    const unsigned = await authFetch(`${edgeUrl}/hooks/github`, {
      method: "POST",
      headers: { "x-github-event": "push" },
      body: payload,
    });
    assert.equal(unsigned.status, 401);
    const good = await authFetch(`${edgeUrl}/hooks/github`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-github-event": "push", "x-hub-signature-256": sign(SECRET) },
      body: payload,
    });
    assert.equal(good.status, 202);
    const expected = await lsRemote(`${origin.url}/acme/rocket.git`);
    await eventually(
      async () => ((await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`)) === expected ? true : undefined),
      20_000,
      "the pushed commit to be served",
    );
  });

  test("pause and resume through the CLI; list and show print state, lag and size", async () => {
    const paused = await cli(["mirror", "pause", "github.com/acme/rocket", "--reason", "maintenance window"], edgeUrl);
    assert.equal(paused.code, 0, paused.stderr);
    const refused = await authFetch(`${edgeUrl}/api/mirrors/github.com/acme/rocket/sync`, { method: "POST" });
    assert.equal(refused.status, 412);
    assert.match(
      ((await refused.json()) as { error: string }).error,
      /paused \(maintenance window\).*nearhub mirror resume/,
    );
    // A paused mirror still serves.
    await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`);
    const shown = await cli(["mirror", "show", "github.com/acme/rocket"], edgeUrl);
    assert.match(shown.stdout, /state\s+paused/);
    assert.match(shown.stdout, /paused\s+maintenance window/);
    const resumed = await cli(["mirror", "resume", "github.com/acme/rocket"], edgeUrl);
    assert.equal(resumed.code, 0, resumed.stderr);
    const list = await cli(["mirror", "list"], edgeUrl);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /github.com\/acme\/rocket\s+(in_sync|syncing)\s+synced \d+s ago\s+lag \d+s\s+[\d.]+ KiB/);
  });

  test("pull-through: concurrent first clones create the mirror and share one upstream fetch", async () => {
    await makeOrigin("acme", "fresh");
    const clones = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        git(["clone", "-q", `${edgeUrl}/github.com/acme/fresh.git`, join(dir.path, `fresh-${i}`)]).then(() => i),
      ),
    );
    assert.equal(clones.length, 4);
    assert.equal(origin.fetches.get("/acme/fresh.git"), 1, "one upstream fetch");
    assert.equal(
      await lsRemote(`${edgeUrl}/github.com/acme/fresh.git`),
      await lsRemote(`${origin.url}/acme/fresh.git`),
    );
    // Outside the allow patterns: refused with a message, nothing created.
    const r = await gitFails(["ls-remote", `${edgeUrl}/github.com/other/thing.git`]);
    assert.notEqual(r.code, 0);
    assert.ok(!existsSync(join(dataDir, "git", "repos", "github.com", "other")));
  });

  test("mirror remove deletes the definition and the repository on disk", async () => {
    const repo = join(dataDir, "git", "repos", "github.com", "acme", "fresh.git");
    assert.ok(existsSync(repo));
    const removed = await cli(["mirror", "remove", "github.com/acme/fresh"], edgeUrl);
    assert.equal(removed.code, 0, removed.stderr);
    assert.ok(!existsSync(repo));
    const shown = await cli(["mirror", "show", "github.com/acme/fresh"], edgeUrl);
    assert.notEqual(shown.code, 0);
    assert.match(shown.stderr, /no mirror named github.com\/acme\/fresh/);
  });

  test("an upstream that refuses credentials pauses the mirror with the reason", async () => {
    await makeOrigin("acme", "private");
    trouble.set("acme/private", "401");
    const add = await authFetch(`${edgeUrl}/api/mirrors`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "github.com/acme/private" }),
    });
    assert.equal(add.status, 201);
    const mirror = await eventually(
      async () => {
        const { mirror } = (await (await authFetch(`${edgeUrl}/api/mirrors/github.com/acme/private`)).json()) as {
          mirror: { state: string; pausedReason?: string };
        };
        return mirror.state === "MIRROR_STATE_PAUSED" ? mirror : undefined;
      },
      20_000,
      "the mirror to pause",
    );
    assert.match(mirror.pausedReason ?? "", /credentials.*nearhub mirror resume/);
  });

  test("upstream down: mirrored repositories keep serving", async () => {
    const expected = await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`);
    await origin.close();
    const clone = join(dir.path, "offline");
    await git(["clone", "-q", `${edgeUrl}/github.com/acme/rocket.git`, clone]);
    assert.equal(await lsRemote(`${edgeUrl}/github.com/acme/rocket.git`), expected);
  });

  test("events: mirror.git.synced carries each changed ref with old and new sha", async () => {
    const nc = await connect({ servers: natsUrl });
    try {
      const js = jetstream(nc);
      const consumer = await js.consumers.get(`${ns.toUpperCase()}_EVENTS`, {
        filter_subjects: `nearhub_${ns}.events.mirror.git.>`,
      });
      const types = new Set<string>();
      const changes: { ref: string; oldSha?: string; newSha?: string; forced?: boolean }[] = [];
      const batch = await consumer.fetch({ max_messages: 500, expires: 2000 });
      for await (const m of batch) {
        types.add(m.headers?.get("ce-type") ?? "");
        if (m.subject.endsWith(".synced")) {
          const body = JSON.parse(new TextDecoder().decode(m.data)) as { name: string; changes?: typeof changes };
          if (body.name === "github.com/acme/rocket") changes.push(...(body.changes ?? []));
        }
        if (m.info.pending === 0) break;
      }
      for (const t of ["added", "synced", "failed", "paused", "resumed"])
        assert.ok(types.has(`nearhub.mirror.git.${t}`), t);
      const deleted = changes.find((c) => c.ref === "refs/heads/feature" && !c.newSha);
      assert.ok(deleted?.oldSha?.match(/^[0-9a-f]{40}$/), "the deleted branch with its old sha");
      assert.ok(changes.some((c) => c.ref === "refs/heads/rewrite" && c.forced && c.oldSha && c.newSha));
    } finally {
      await nc.close();
    }
  });

  test("gRPC management answers hostile requests with the right codes", async () => {
    const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      const cases: [() => Promise<unknown>, Code, RegExp][] = [
        [() => client.syncMirror({ name: "github.com/acme/rocket", reason: "bogus" }), Code.InvalidArgument, /reason/],
        [
          () => client.syncMirror({ name: "github.com/acme/rocket", wait: true, timeoutSeconds: 100_000 }),
          Code.InvalidArgument,
          /timeout_seconds/,
        ],
        [() => client.pauseMirror({ name: "github.com/acme/none" }), Code.NotFound, /nearhub mirror add/],
        [() => client.resumeMirror({ name: "github.com/../etc" }), Code.InvalidArgument, /not a valid name/],
        [
          () => client.pauseMirror({ name: "github.com/acme/rocket", reason: "x".repeat(600) }),
          Code.InvalidArgument,
          /500 characters/,
        ],
        [() => client.syncMirror({ name: "nowhere/acme/x" }), Code.InvalidArgument, /unknown upstream/],
      ];
      for (const [call, code, message] of cases) {
        await assert.rejects(call(), (e: NearhubError) => e.code === code && message.test(e.message));
      }
    } finally {
      client.$close();
    }
  });

  test("hostile input gets 4xx with a message and touches nothing on disk", async () => {
    const before = JSON.stringify(readdirSync(join(dataDir, "git", "repos"), { recursive: true }).sort());
    const cases: [string, RequestInit | undefined, RegExp][] = [
      ["/github.com/acme/../../etc/info/refs?service=git-upload-pack", undefined, /./],
      ["/github.com/acme/%2e%2e/info/refs?service=git-upload-pack", undefined, /./],
      ["/github.com/%2e%2e/rocket/info/refs?service=git-upload-pack", undefined, /no route/],
      ["/github.com/acme/ro%00cket/info/refs?service=git-upload-pack", undefined, /not valid/],
      ["/github.com/acme/ro%0acket/info/refs?service=git-upload-pack", undefined, /not valid/],
      ["/%2Fetc/acme/rocket/info/refs?service=git-upload-pack", undefined, /./],
      ["/nowhere.example/acme/rocket/info/refs?service=git-upload-pack", undefined, /unknown upstream/],
      ["/github.com/acme/rocket.git/info/refs", undefined, /smart HTTP/],
      [
        "/github.com/acme/rocket.git/git-upload-pack",
        {
          method: "POST",
          headers: { "content-type": "application/x-git-upload-pack-request" },
          body: "ffff" + "x".repeat(100),
        },
        /above git's 65520-byte limit/,
      ],
      [
        "/github.com/acme/rocket.git/git-upload-pack",
        { method: "POST", headers: { "content-type": "application/x-git-upload-pack-request" }, body: "zz" },
        /malformed git request/,
      ],
      [
        "/github.com/acme/rocket.git/git-upload-pack",
        {
          method: "POST",
          headers: { "content-type": "application/x-git-upload-pack-request", "content-encoding": "gzip" },
          body: "not gzip",
        },
        /gzip/,
      ],
      ["/github.com/acme/rocket.git/git-upload-pack", { method: "POST", body: "0000" }, /content-type/],
      ["/api/mirrors/github.com/acme/nope/sync", { method: "POST" }, /no mirror named/],
      ["/api/mirrors/github.com/acme/rocket/sync?wait=1&timeout=-5", { method: "POST" }, /timeout/],
      ["/hooks/github", { method: "POST", body: "x".repeat(100) }, /Signature/],
    ];
    for (const [path, init, message] of cases) {
      const res = await authFetch(`${edgeUrl}${path}`, init);
      assert.ok(res.status >= 400 && res.status < 500, `${path} answered ${res.status}`);
      assert.match(await res.text(), message, path);
    }
    assert.equal(JSON.stringify(readdirSync(join(dataDir, "git", "repos"), { recursive: true }).sort()), before);
  });
});
