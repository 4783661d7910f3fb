import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { chmod, mkdir, readFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { Code, createClient, parseEnv, type NearhubError } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { startStorage, storageEnv } from "@nearhub/storage";
import { serveGitHttpBackend, startSync, syncEnv, type HttpBackend, type SyncHandle } from "@nearhub/sync";
import { createLfsDouble, type LfsDouble } from "@nearhub/testing";
import { adminAuth, deleteNamespace, nats, serviceEnv, tempDir, uniqueNamespace } from "./harness.js";
import { GIT_ENV, exec } from "./processes.js";

const run = promisify(execFile);
// git-lfs as a filter, without installing hooks: pushes to the origin stay plain git.
const LFS_FILTER = [
  "-c",
  "filter.lfs.clean=git-lfs clean -- %f",
  "-c",
  "filter.lfs.smudge=git-lfs smudge -- %f",
  "-c",
  "filter.lfs.process=git-lfs filter-process",
  "-c",
  "filter.lfs.required=true",
];

/** git that must succeed. */
async function git(args: string[], cwd?: string, env: NodeJS.ProcessEnv = {}) {
  const r = await exec("git", args, { ...(cwd ? { cwd } : {}), env: { ...GIT_ENV, ...env } });
  assert.equal(r.code, 0, `git ${args.join(" ")} failed: ${r.stderr}`);
  return r;
}

/** Refs as sorted `sha\tref` lines, heads and tags only. */
async function lsRemote(url: string, protocol = 2, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const { stdout } = await git(
    ["-c", `protocol.version=${protocol}`, "ls-remote", "--heads", "--tags", url],
    undefined,
    env,
  );
  return stdout
    .split("\n")
    .filter((l) => l && !l.endsWith("^{}"))
    .sort()
    .join("\n");
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("git mirror: LFS, SSH and pull-through progress with the real git, git-lfs and ssh clients", () => {
  const ns = uniqueNamespace("gl");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let origin: HttpBackend;
  let lfs: LfsDouble;
  let storage: Awaited<ReturnType<typeof startStorage>>;
  let sync: SyncHandle;
  let edge: Edge;
  let edgeUrl: string;
  let originRoot: string;
  let dataDir: string;
  let sshPort: number;
  let sshEnv: NodeJS.ProcessEnv;
  let strangerEnv: NodeJS.ProcessEnv;
  /** Repositories whose upstream answers slowly (to watch a pull-through wait). */
  const slow = new Set<string>();
  const files = new Map<string, Buffer>();
  let demoWork: string;

  /** An origin repository whose `*.bin` files are LFS objects, kept by the LFS double. */
  async function makeLfsOrigin(owner: string, repo: string, bins: Record<string, Buffer>): Promise<string> {
    const bare = join(originRoot, owner, `${repo}.git`);
    await mkdir(join(originRoot, owner), { recursive: true });
    await git(["init", "--bare", "-q", "-b", "main", bare]);
    const wt = join(dir.path, "work", owner, repo);
    await git(["clone", "-q", bare, wt]);
    writeFileSync(join(wt, ".gitattributes"), "*.bin filter=lfs diff=lfs merge=lfs -text\n");
    writeFileSync(join(wt, "README.md"), `# ${repo}\n`);
    await commitLfs(wt, bins, "first");
    await git(["tag", "-a", "v1", "-m", "v1"], wt);
    await git(["push", "-q", "origin", "main", "v1"], wt);
    return wt;
  }

  /** Writes LFS files, commits them through the git-lfs clean filter and gives their objects to the double. */
  async function commitLfs(wt: string, bins: Record<string, Buffer>, message: string): Promise<void> {
    for (const [name, bytes] of Object.entries(bins)) {
      await mkdir(dirname(join(wt, name)), { recursive: true });
      writeFileSync(join(wt, name), bytes);
    }
    await git([...LFS_FILTER, "add", "."], wt);
    await git([...LFS_FILTER, "commit", "-q", "-m", message], wt);
    const store = join(wt, ".git", "lfs", "objects");
    for (const f of readdirSync(store, { recursive: true, withFileTypes: true })) {
      if (f.isFile() && /^[0-9a-f]{64}$/.test(f.name)) lfs.put(readFileSync(join(f.parentPath, f.name)));
    }
  }

  const admin = () => adminAuth(ns);
  const mirrorOf = async (name: string) =>
    (
      (await (await fetch(`${edgeUrl}/api/mirrors/${name}`, { headers: admin() })).json()) as {
        mirror?: Record<string, unknown>;
      }
    ).mirror;
  const addMirror = async (body: Record<string, unknown>) => {
    const res = await fetch(`${edgeUrl}/api/mirrors`, {
      method: "POST",
      headers: { ...admin(), "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.ok(res.status === 201 || res.status === 200, `add mirror: ${res.status} ${await res.text()}`);
  };
  const syncWait = async (name: string) => {
    const res = await fetch(`${edgeUrl}/api/mirrors/${name}/sync?wait=1&timeout=60`, {
      method: "POST",
      headers: admin(),
    });
    return (await res.json()) as { finished: boolean; mirror: Record<string, unknown> };
  };
  const batch = (name: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${edgeUrl}/${name}.git/info/lfs/objects/batch`, {
      method: "POST",
      headers: { accept: "application/vnd.git-lfs+json", "content-type": "application/vnd.git-lfs+json", ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-gitlfs-");
    originRoot = join(dir.path, "origin");
    dataDir = join(dir.path, "data");
    await mkdir(originRoot, { recursive: true });
    lfs = createLfsDouble();
    origin = await serveGitHttpBackend({
      root: originRoot,
      intercept: async (req, res) => {
        if (lfs.handle(req, res, origin.url)) return true;
        const repo = /^\/([^/]+\/[^/]+?)(\.git)?\//.exec(req.url ?? "")?.[1] ?? "";
        if (slow.has(repo) && req.method === "POST") await new Promise((r) => setTimeout(r, 2500));
        return false;
      },
    });
    files.set("model.bin", randomBytes(300_000));
    files.set("weights/small.bin", randomBytes(5_000));
    demoWork = await makeLfsOriginWithDirs();

    // SSH keys: alice is authorized (her key's comment is her subject), mallory is not.
    const keys = join(dir.path, "keys");
    await mkdir(keys, { recursive: true });
    for (const who of ["alice", "mallory"]) {
      await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", `user:${who}`, "-f", join(keys, who)]);
      await chmod(join(keys, who), 0o600);
    }
    writeFileSync(join(keys, "authorized_keys"), `# nearhub\n${await readFile(join(keys, "alice.pub"), "utf8")}`);
    const sshCommand = (who: string) =>
      `ssh -i ${join(keys, who)} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes`;
    sshEnv = { GIT_SSH_COMMAND: sshCommand("alice") };
    strangerEnv = { GIT_SSH_COMMAND: sshCommand("mallory") };
    sshPort = await freePort();

    const env = serviceEnv(natsUrl, ns, dataDir, {
      NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}`,
      NEARHUB_GIT_HTTP_PORT: "0",
      NEARHUB_GIT_SCHEDULER_TICK_MS: "500",
      NEARHUB_GIT_BACKOFF_S: "1",
      // Clones and LFS downloads without a token; management with the namespace's admin token.
      NEARHUB_ANONYMOUS_READ: "github.com/*",
    });
    storage = await startStorage(parseEnv("storage", storageEnv, env));
    const storageAddr = `127.0.0.1:${storage.grpcPort}`;
    sync = await startSync(parseEnv("sync", syncEnv, { ...env, NEARHUB_STORAGE_ADDR: storageAddr }));
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...env,
        NEARHUB_STORAGE_ADDR: storageAddr,
        NEARHUB_SYNC_ADDR: `127.0.0.1:${sync.grpcPort}`,
        NEARHUB_SYNC_GIT_URL: `http://127.0.0.1:${sync.gitHttpPort}`,
        NEARHUB_GIT_PULL_THROUGH_ALLOW: "github.com/acme/*",
        NEARHUB_SSH_PORT: String(sshPort),
        NEARHUB_SSH_AUTHORIZED_KEYS: join(keys, "authorized_keys"),
      }),
    );
    edgeUrl = `http://127.0.0.1:${edge.httpPort}`;
  });

  async function makeLfsOriginWithDirs(): Promise<string> {
    return makeLfsOrigin("acme", "demo", {
      "model.bin": files.get("model.bin") ?? Buffer.alloc(0),
      "weights/small.bin": files.get("weights/small.bin") ?? Buffer.alloc(0),
    });
  }

  after(async () => {
    await edge?.stop();
    await sync?.stop();
    await storage?.stop();
    await origin?.close();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("mirror add --lfs: the sync stores the LFS objects; git clone + git lfs pull from the edge get the real contents", async () => {
    await addMirror({ name: "github.com/acme/demo", lfs: true, interval_seconds: 3600 });
    const synced = await syncWait("github.com/acme/demo");
    assert.equal(synced.mirror["state"], "MIRROR_STATE_IN_SYNC", JSON.stringify(synced));
    assert.equal((await mirrorOf("github.com/acme/demo"))?.["lfs"], true);

    const downloadsAfterSync = lfs.requests.get("download") ?? 0;
    assert.equal(downloadsAfterSync, 2, "both LFS objects fetched from the upstream once");
    const clone = join(dir.path, "lfs-clone");
    await git(["clone", "-q", `${edgeUrl}/github.com/acme/demo.git`, clone], undefined, { GIT_LFS_SKIP_SMUDGE: "1" });
    // Without LFS the checkout holds pointers.
    assert.match(readFileSync(join(clone, "model.bin"), "utf8"), /^version https:\/\/git-lfs.github.com\/spec\/v1/);
    await git(["lfs", "install", "--local"], clone);
    const pulled = await git(["lfs", "pull"], clone);
    for (const [name, bytes] of files)
      assert.ok(
        readFileSync(join(clone, name)).equals(bytes),
        `${name} has the real bytes: ${pulled.stdout} ${pulled.stderr}`,
      );
    assert.equal(lfs.requests.get("download") ?? 0, downloadsAfterSync, "the clone never reached the upstream");

    // A new LFS file upstream: the next sync fetches only it, a fresh clone with smudge gets it.
    const extra = randomBytes(70_000);
    await commitLfs(demoWork, { "extra.bin": extra }, "extra");
    await git(["push", "-q", "origin", "main"], demoWork);
    assert.equal((await syncWait("github.com/acme/demo")).mirror["state"], "MIRROR_STATE_IN_SYNC");
    assert.equal(lfs.requests.get("download") ?? 0, downloadsAfterSync + 1, "only the new object fetched");
    const smudged = join(dir.path, "lfs-clone-2");
    await git([...LFS_FILTER, "clone", "-q", `${edgeUrl}/github.com/acme/demo.git`, smudged]);
    assert.ok(readFileSync(join(smudged, "extra.bin")).equals(extra));
    assert.ok(readFileSync(join(smudged, "model.bin")).equals(files.get("model.bin") ?? Buffer.alloc(0)));
  });

  test("LFS at the edge: batch answers, ranges, and hostile requests get 4xx with a message", async () => {
    const model = files.get("model.bin") ?? Buffer.alloc(0);
    const oid = sha256(model);
    const unknown = "0".repeat(64);
    const ok = await batch("github.com/acme/demo", {
      operation: "download",
      transfers: ["basic"],
      objects: [
        { oid, size: model.length },
        { oid: unknown, size: 3 },
      ],
    });
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get("content-type") ?? "", /application\/vnd\.git-lfs\+json/);
    const answer = (await ok.json()) as {
      objects: {
        oid: string;
        size: number;
        actions?: { download: { href: string } };
        error?: { code: number; message: string };
      }[];
    };
    const href = answer.objects[0]?.actions?.download.href ?? "";
    assert.equal(href, `${edgeUrl}/github.com/acme/demo.git/info/lfs/objects/${oid}`);
    assert.equal(answer.objects[1]?.error?.code, 404);
    assert.match(answer.objects[1]?.error?.message ?? "", /does not exist/);

    const ranged = await fetch(href, { headers: { range: "bytes=100-199" } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get("content-range"), `bytes 100-199/${model.length}`);
    assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(model.subarray(100, 200)));
    const whole = await fetch(href);
    assert.equal(sha256(Buffer.from(await whole.arrayBuffer())), oid);

    // A mirror without --lfs knows no objects; an object of another repository is not served under this one.
    await addMirror({ name: "github.com/acme/plain", interval_seconds: 3600 });
    const cases: [string, Promise<Response>, number, RegExp][] = [
      ["bad JSON", batch("github.com/acme/demo", "{nope"), 400, /not valid JSON/],
      [
        "upload",
        batch("github.com/acme/demo", { operation: "upload", objects: [{ oid, size: 1 }] }),
        403,
        /read-only mirror/,
      ],
      ["bad operation", batch("github.com/acme/demo", { operation: "delete", objects: [] }), 422, /operation/],
      [
        "invalid oid",
        batch("github.com/acme/demo", { operation: "download", objects: [{ oid: "../../etc/passwd", size: 1 }] }),
        422,
        /64 lowercase hex/,
      ],
      [
        "negative size",
        batch("github.com/acme/demo", { operation: "download", objects: [{ oid, size: -1 }] }),
        422,
        /size/,
      ],
      [
        "too many objects",
        batch("github.com/acme/demo", {
          operation: "download",
          objects: Array.from({ length: 1001 }, (_, i) => ({ oid: i.toString(16).padStart(64, "0"), size: 1 })),
        }),
        413,
        /at most 1000 objects/,
      ],
      [
        "huge body",
        batch("github.com/acme/demo", JSON.stringify({ operation: "download", pad: "x".repeat(400_000) })),
        413,
        /larger than/,
      ],
      [
        "sha1 hashes",
        batch("github.com/acme/demo", { operation: "download", hash_algo: "sha1", objects: [] }),
        409,
        /sha256/,
      ],
      [
        "not mirrored",
        batch("github.com/acme/nothing", { operation: "download", objects: [{ oid, size: 1 }] }),
        404,
        /not mirrored/,
      ],
      [
        "traversal",
        batch("github.com/acme/%2e%2e", { operation: "download", objects: [{ oid, size: 1 }] }),
        400,
        /not valid/,
      ],
      ["bad oid in URL", fetch(`${edgeUrl}/github.com/acme/demo.git/info/lfs/objects/ABC%00`), 400, /not an LFS oid/],
      [
        "traversal in URL",
        fetch(`${edgeUrl}/github.com/acme/demo.git/info/lfs/objects/..%2F..%2Fetc`),
        405,
        /not allowed/,
      ],
      ["unknown oid", fetch(`${edgeUrl}/github.com/acme/demo.git/info/lfs/objects/${unknown}`), 404, /does not exist/],
      ["other repo", fetch(`${edgeUrl}/github.com/acme/plain.git/info/lfs/objects/${oid}`), 404, /./],
      ["range outside", fetch(href, { headers: { range: `bytes=${model.length + 5}-` } }), 416, /outside/],
      [
        "locks",
        fetch(`${edgeUrl}/github.com/acme/demo.git/info/lfs/locks/verify`, { method: "POST", body: "{}" }),
        403,
        /read-only/,
      ],
    ];
    await syncWait("github.com/acme/plain").catch(() => undefined);
    for (const [what, pending, status, message] of cases) {
      const res = await pending;
      assert.equal(res.status, status, `${what}: ${res.status}`);
      assert.match(await res.text(), message, what);
    }
  });

  test("LFS upstream failures: a missing or corrupt object fails the sync with a clear error, nothing half-stored", async () => {
    const served = await lsRemote(`${edgeUrl}/github.com/acme/demo.git`);
    const lost = randomBytes(40_000);
    const lostOid = sha256(lost);
    await commitLfs(demoWork, { "lost.bin": lost }, "lost");
    await git(["push", "-q", "origin", "main"], demoWork);
    const storageClient = createClient(StorageService, `127.0.0.1:${storage.grpcPort}`);
    try {
      lfs.objects.delete(lostOid);
      let body = await syncWait("github.com/acme/demo");
      assert.equal(body.mirror["state"], "MIRROR_STATE_FAILED");
      assert.match(String(body.mirror["lastError"]), new RegExp(`LFS object ${lostOid} \\(lost.bin.*404`));
      assert.equal(await lsRemote(`${edgeUrl}/github.com/acme/demo.git`), served, "refs did not move");

      lfs.put(lost);
      lfs.corrupt.add(lostOid);
      body = await syncWait("github.com/acme/demo");
      assert.equal(body.mirror["state"], "MIRROR_STATE_FAILED");
      assert.match(String(body.mirror["lastError"]), /lost\.bin.*was not stored: .*hash/);
      assert.deepEqual((await storageClient.hasBlobs({ sha256: [lostOid] })).present, [], "nothing stored");
      assert.equal(await lsRemote(`${edgeUrl}/github.com/acme/demo.git`), served, "refs did not move");
      await assert.rejects(storageClient.statBlob({ sha256: lostOid }), (e: NearhubError) => e.code === Code.NotFound);

      lfs.corrupt.delete(lostOid);
      body = await syncWait("github.com/acme/demo");
      assert.equal(body.mirror["state"], "MIRROR_STATE_IN_SYNC");
      assert.deepEqual((await storageClient.hasBlobs({ sha256: [lostOid] })).present, [lostOid]);
      assert.equal(
        await lsRemote(`${edgeUrl}/github.com/acme/demo.git`),
        await lsRemote(`${origin.url}/acme/demo.git`),
      );
    } finally {
      storageClient.$close();
    }
  });

  test("LFS switched on for a mirror synced without it: the next sync fetches its whole history's objects", async () => {
    const late = randomBytes(9_000);
    await makeLfsOrigin("acme", "late", { "late.bin": late });
    await addMirror({ name: "github.com/acme/late", interval_seconds: 3600 });
    assert.equal((await syncWait("github.com/acme/late")).mirror["state"], "MIRROR_STATE_IN_SYNC");
    const ask = async () => {
      const res = await batch("github.com/acme/late", {
        operation: "download",
        objects: [{ oid: sha256(late), size: late.length }],
      });
      assert.equal(res.status, 200);
      return ((await res.json()) as { objects: { actions?: unknown; error?: { code: number; message: string } }[] })
        .objects[0];
    };
    const before = await ask();
    assert.equal(before?.error?.code, 404);
    assert.match(
      before?.error?.message ?? "",
      /not mirrored with LFS.*nearhub mirror add github.com\/acme\/late --lfs/,
    );
    await addMirror({ name: "github.com/acme/late", interval_seconds: 3600, lfs: true });
    assert.equal((await syncWait("github.com/acme/late")).mirror["state"], "MIRROR_STATE_IN_SYNC");
    const after = await ask();
    assert.ok(after?.actions, JSON.stringify(after));
    const clone = join(dir.path, "late-clone");
    await git([...LFS_FILTER, "clone", "-q", `${edgeUrl}/github.com/acme/late.git`, clone]);
    assert.ok(readFileSync(join(clone, "late.bin")).equals(late));
  });

  test("SSH: clone, fetch and ls-remote with protocol v2 and v0 for an authorized key", async () => {
    const sshUrl = `ssh://git@127.0.0.1:${sshPort}/github.com/acme/demo.git`;
    const expected = await lsRemote(`${origin.url}/acme/demo.git`);
    for (const protocol of [2, 0]) {
      assert.equal(await lsRemote(sshUrl, protocol, sshEnv), expected, `ls-remote v${protocol}`);
      const clone = join(dir.path, `ssh-clone-v${protocol}`);
      await git(["-c", `protocol.version=${protocol}`, "clone", "-q", "--mirror", sshUrl, clone], undefined, sshEnv);
      await git(["fsck", "--no-progress"], clone);
      const { stdout } = await git(["for-each-ref", "--format=%(objectname)\t%(refname)"], clone);
      assert.equal(stdout.trim().split("\n").sort().join("\n"), expected);
    }
    // Protocol v2 really is spoken end to end (GIT_PROTOCOL travels in the SSH env request).
    const traced = await git(["-c", "protocol.version=2", "ls-remote", sshUrl], undefined, {
      ...sshEnv,
      GIT_TRACE_PACKET: "1",
    });
    assert.match(traced.stderr, /< version 2/);
    assert.match(traced.stderr, /> command=ls-refs/);
    // Without .git, and an incremental fetch over an existing clone.
    assert.equal(await lsRemote(`ssh://git@127.0.0.1:${sshPort}/github.com/acme/demo`, 2, sshEnv), expected);
    const work = join(dir.path, "ssh-work");
    await git(["clone", "-q", "--depth", "1", sshUrl, work], undefined, { ...sshEnv, GIT_LFS_SKIP_SMUDGE: "1" });
    await git(["fetch", "-q", "--unshallow", "origin"], work, sshEnv);
    assert.equal(
      (await git(["rev-parse", "origin/main"], work)).stdout.trim(),
      expected
        .split("\n")
        .find((l) => l.endsWith("refs/heads/main"))
        ?.split("\t")[0],
    );
  });

  test("SSH refuses unknown keys, push, other commands, shells and traversal with a message", async () => {
    const sshUrl = `ssh://git@127.0.0.1:${sshPort}/github.com/acme/demo.git`;
    const stranger = await exec("git", ["ls-remote", sshUrl], { env: { ...GIT_ENV, ...strangerEnv } });
    assert.notEqual(stranger.code, 0);
    assert.match(stranger.stderr, /Permission denied \(publickey\)/);

    const work = join(dir.path, "ssh-work");
    const push = await exec("git", ["push", sshUrl, "HEAD:refs/heads/evil"], {
      cwd: work,
      env: { ...GIT_ENV, ...sshEnv },
    });
    assert.notEqual(push.code, 0);
    assert.match(push.stderr, /nearhub: github.com\/acme\/demo is a read-only mirror/);

    const ssh = (command: string[]) =>
      exec("sh", [
        "-c",
        `${sshEnv["GIT_SSH_COMMAND"] ?? ""} -p ${sshPort} git@127.0.0.1 ${command.map((c) => `"${c}"`).join(" ")}`,
      ]);
    const arbitrary = await ssh(["cat /etc/passwd"]);
    assert.notEqual(arbitrary.code, 0);
    assert.match(arbitrary.stderr, /only git-upload-pack is served/);
    assert.doesNotMatch(arbitrary.stdout, /root:/);
    const chained = await ssh(["git-upload-pack '/github.com/acme/demo.git'; id"]);
    assert.notEqual(chained.code, 0);
    assert.match(chained.stderr, /only git-upload-pack is served/);
    const archive = await ssh(["git-upload-archive '/github.com/acme/demo.git'"]);
    assert.match(archive.stderr, /not served/);
    const shell = await exec("sh", [
      "-c",
      `${sshEnv["GIT_SSH_COMMAND"] ?? ""} -T -p ${sshPort} git@127.0.0.1 < /dev/null`,
    ]);
    assert.notEqual(shell.code, 0);
    assert.match(shell.stderr, /no shell access/);
    for (const path of [
      "/github.com/acme/../../etc.git",
      "/github.com/../acme/demo.git",
      "/etc/passwd",
      "/github.com/acme/de%00mo.git",
    ]) {
      const r = await exec("git", ["ls-remote", `ssh://git@127.0.0.1:${sshPort}${path}`], {
        env: { ...GIT_ENV, ...sshEnv },
      });
      assert.notEqual(r.code, 0, path);
      assert.match(r.stderr, /nearhub: .*(not valid|clone URLs look like)/, path);
    }
    const unknownUpstream = await exec("git", ["ls-remote", `ssh://git@127.0.0.1:${sshPort}/nowhere.example/a/b.git`], {
      env: { ...GIT_ENV, ...sshEnv },
    });
    assert.notEqual(unknownUpstream.code, 0);
    assert.match(unknownUpstream.stderr, /nearhub: /);
  });

  test("pull-through shows progress while the first sync runs: HTTP protocol v2 and SSH", async () => {
    await makeLfsOrigin("acme", "slow", { "a.bin": randomBytes(1000) });
    await makeLfsOrigin("acme", "slow2", { "a.bin": randomBytes(1000) });
    slow.add("acme/slow");
    slow.add("acme/slow2");
    try {
      const clone = join(dir.path, "slow-clone");
      const r = await exec(
        "git",
        ["-c", "protocol.version=2", "clone", "--progress", `${edgeUrl}/github.com/acme/slow.git`, clone],
        {
          env: { ...GIT_ENV, GIT_LFS_SKIP_SMUDGE: "1" },
        },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /remote: nearhub: waiting for the upstream fetch of github.com\/acme\/slow… \d+s/);
      assert.equal(
        await lsRemote(`${edgeUrl}/github.com/acme/slow.git`),
        await lsRemote(`${origin.url}/acme/slow.git`),
      );
      await git(["fsck", "--no-progress"], clone);

      const sshClone = join(dir.path, "slow2-clone");
      const s = await exec(
        "git",
        ["clone", "--progress", `ssh://git@127.0.0.1:${sshPort}/github.com/acme/slow2.git`, sshClone],
        {
          env: { ...GIT_ENV, ...sshEnv, GIT_LFS_SKIP_SMUDGE: "1" },
        },
      );
      assert.equal(s.code, 0, s.stderr);
      assert.match(s.stderr, /nearhub: waiting for the upstream fetch of github.com\/acme\/slow2… \d+s/);
      assert.equal(
        await lsRemote(`${edgeUrl}/github.com/acme/slow2.git`),
        await lsRemote(`${origin.url}/acme/slow2.git`),
      );
    } finally {
      slow.clear();
    }
    // A first clone that fails upstream tells why through the same channel.
    const missing = join(dir.path, "missing-clone");
    const f = await exec("git", [
      "-c",
      "protocol.version=2",
      "clone",
      `${edgeUrl}/github.com/acme/never-existed.git`,
      missing,
    ]);
    assert.notEqual(f.code, 0);
    assert.match(f.stderr, /remote error: nearhub: cannot list the refs of github.com\/acme\/never-existed upstream/);
    assert.ok((await mirrorOf("github.com/acme/never-existed")) !== undefined);
  });
});
