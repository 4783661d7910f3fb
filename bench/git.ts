/**
 * Git serving and sync cost, on loopback with the real `git`:
 * 1. a repository generated with `git fast-import` (BENCH_GIT_COMMITS, default 20,000 commits),
 *    cloned in full and partially (`--filter=blob:none`) through the edge and straight from
 *    `git http-backend` serving the same bare repository: medians of both and their ratio; the
 *    full clone also over SSH (edge's ssh2 server bridged to upload-pack in sync) against it;
 * 2. BENCH_GIT_MIRRORS (default 1,000) mirrors whose upstream did not change, all synced once:
 *    wall time and CPU seconds of that no-op round.
 */
import { execFile, spawn } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient, parseEnv } from "@nearhub/platform";
import { SyncService } from "@nearhub/proto/sync";
import { edgeEnv, startEdge } from "@nearhub/edge";
import { serveGitHttpBackend, startSync, syncEnv } from "@nearhub/sync";
import { adminAuth, deleteNamespace, nats, serviceEnv, uniqueNamespace } from "@nearhub/testing";

const run = promisify(execFile);
const COMMITS = Number(process.env["BENCH_GIT_COMMITS"] ?? 20_000);
const MIRRORS = Number(process.env["BENCH_GIT_MIRRORS"] ?? 1_000);
const ROUNDS = Number(process.env["BENCH_GIT_ROUNDS"] ?? 3);
const ENV = { ...process.env, GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null" };

/** Writes a fast-import stream: COMMITS commits over 2,000 files, each commit changing one. */
async function generate(bare: string): Promise<number> {
  await run("git", ["init", "--bare", "-q", "-b", "main", bare], { env: ENV });
  const started = Date.now();
  const child = spawn("git", ["fast-import", "--quiet"], { cwd: bare, env: ENV, stdio: ["pipe", "ignore", "inherit"] });
  const done = new Promise<void>((resolve, reject) =>
    child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`fast-import exited ${String(code)}`)))),
  );
  let buffer = "";
  const flush = async () => {
    if (!child.stdin.write(buffer)) await new Promise((r) => child.stdin.once("drain", r));
    buffer = "";
  };
  for (let i = 1; i <= COMMITS; i++) {
    const content = `file ${i % 2000} revision ${i}\n${"lorem ipsum dolor sit amet ".repeat(1 + (i % 40))}\n`;
    const message = `commit ${i}\n`;
    buffer +=
      `commit refs/heads/main\nmark :${i}\ncommitter Bench <bench@example.com> ${1_600_000_000 + i * 60} +0000\n` +
      `data ${Buffer.byteLength(message)}\n${message}` +
      (i > 1 ? `from :${i - 1}\n` : "") +
      `M 644 inline src/dir${i % 50}/file${i % 2000}.txt\ndata ${Buffer.byteLength(content)}\n${content}\n`;
    if (i % 1000 === 0) {
      buffer += `reset refs/tags/v${i / 1000}\nfrom :${i}\n\n`;
      await flush();
    }
  }
  await flush();
  child.stdin.end();
  await done;
  await run("git", ["-C", bare, "repack", "-a", "-d", "-q", "--write-bitmap-index"], { env: ENV });
  return Date.now() - started;
}

async function timeClone(url: string, dir: string, extra: string[], env: NodeJS.ProcessEnv = {}): Promise<number> {
  await rm(dir, { recursive: true, force: true });
  const t = process.hrtime.bigint();
  await run("git", ["clone", "-q", "--bare", ...extra, url, dir], { env: { ...ENV, ...env }, maxBuffer: 1 << 26 });
  return Number(process.hrtime.bigint() - t) / 1e6;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

/** CPU seconds of this process and of the children it has reaped (git), from /proc. */
function cpuSeconds(): { self: number; children: number } {
  const fields = readFileSync("/proc/self/stat", "utf8").split(") ")[1]?.split(" ") ?? [];
  const tick = 100;
  const f = (i: number) => Number(fields[i - 3] ?? 0) / tick;
  return { self: f(14) + f(15), children: f(16) + f(17) };
}

export async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-bench-git-"));
  const natsUrl = (await nats()).url;
  const ns = uniqueNamespace("b");
  const originRoot = join(dir, "origin");
  await mkdir(join(originRoot, "bench"), { recursive: true });
  const bare = join(originRoot, "bench", "big.git");
  const genMs = await generate(bare);
  console.log(`git: generated ${COMMITS} commits with git fast-import in ${(genMs / 1000).toFixed(1)} s`);

  const origin = await serveGitHttpBackend({ root: originRoot });
  // SSH: one key, authorized as user:bench, and a free port for the edge's SSH server.
  const key = join(dir, "id_bench");
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "user:bench", "-f", key]);
  await writeFile(join(dir, "authorized_keys"), await readFile(`${key}.pub`));
  const probe = createNetServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const sshPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const sshEnv = {
    GIT_SSH_COMMAND: `ssh -i ${key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes`,
  };
  const env = serviceEnv(natsUrl, ns, join(dir, "data"), {
    NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}`,
    NEARHUB_GIT_SCHEDULER_TICK_MS: "600000",
    NEARHUB_GIT_SYNC_CONCURRENCY: "4",
    NEARHUB_ANONYMOUS_READ: "github.com/*",
  });
  const sync = await startSync(parseEnv("sync", syncEnv, env));
  const edge = await startEdge(
    parseEnv("edge", edgeEnv, {
      ...env,
      NEARHUB_SYNC_ADDR: `127.0.0.1:${sync.grpcPort}`,
      NEARHUB_SYNC_GIT_URL: `http://127.0.0.1:${sync.gitHttpPort}`,
      NEARHUB_SSH_PORT: String(sshPort),
      NEARHUB_SSH_AUTHORIZED_KEYS: join(dir, "authorized_keys"),
    }),
  );
  const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, {
    timeoutMs: 600_000,
    metadata: adminAuth(ns),
  });
  try {
    const t = Date.now();
    await client.addMirror({ name: "github.com/bench/big" });
    const first = await client.syncMirror({ name: "github.com/bench/big", wait: true, timeoutSeconds: 600 });
    console.log(
      `git: first sync (clone into quarantine, verify, rename) ${((Date.now() - t) / 1000).toFixed(1)} s, repo ${(Number(first.mirror?.sizeBytes ?? 0n) / 1048576).toFixed(1)} MiB`,
    );

    const edgeUrl = `http://127.0.0.1:${edge.httpPort}/github.com/bench/big.git`;
    const directUrl = `${origin.url}/bench/big.git`;
    for (const [label, extra] of [
      ["full clone", []],
      ["partial clone (--filter=blob:none)", ["--filter=blob:none"]],
    ] as const) {
      const viaEdge: number[] = [];
      const direct: number[] = [];
      await timeClone(edgeUrl, join(dir, "warm"), [...extra]);
      for (let i = 0; i < ROUNDS; i++) {
        direct.push(await timeClone(directUrl, join(dir, "c-direct"), [...extra]));
        viaEdge.push(await timeClone(edgeUrl, join(dir, "c-edge"), [...extra]));
      }
      const e = median(viaEdge);
      const d = median(direct);
      console.log(
        `git: ${label}: edge median ${e.toFixed(0)} ms, git http-backend median ${d.toFixed(0)} ms, ratio ${(e / d).toFixed(2)} (target ≤ 1.10; ${ROUNDS} rounds each)`,
      );
    }
    {
      const sshUrl = `ssh://git@127.0.0.1:${sshPort}/github.com/bench/big.git`;
      const viaSsh: number[] = [];
      const direct: number[] = [];
      await timeClone(sshUrl, join(dir, "warm"), [], sshEnv);
      for (let i = 0; i < ROUNDS; i++) {
        direct.push(await timeClone(directUrl, join(dir, "c-direct"), []));
        viaSsh.push(await timeClone(sshUrl, join(dir, "c-ssh"), [], sshEnv));
      }
      const e = median(viaSsh);
      const d = median(direct);
      console.log(
        `git: full clone over SSH: edge median ${e.toFixed(0)} ms, git http-backend median ${d.toFixed(0)} ms, ratio ${(e / d).toFixed(2)} (${ROUNDS} rounds each)`,
      );
    }

    // No-op round: MIRRORS small mirrors already in sync, each synced once.
    const small = join(originRoot, "many");
    await mkdir(small, { recursive: true });
    const seed = join(dir, "seed.git");
    const seedWork = join(dir, "seed");
    await mkdir(seedWork);
    await run(
      "sh",
      [
        "-c",
        "git init -q -b main && echo hello > README && git add . && git -c user.name=b -c user.email=b@example.com commit -q -m seed",
      ],
      { cwd: seedWork, env: ENV },
    );
    await run("git", ["clone", "-q", "--bare", seedWork, seed], { env: ENV });
    await cp(seed, join(small, "r0.git"), { recursive: true });
    await client.addMirror({ name: "github.com/many/r0" });
    const seeded = await client.syncMirror({ name: "github.com/many/r0", wait: true });
    if (!seeded.mirror?.lastSuccessAt)
      throw new Error(`seed mirror did not sync: ${seeded.mirror?.lastError ?? "no status"}`);
    const synced = join(dir, "data", "git", "repos", "github.com", "many", "r0.git");
    for (let i = 1; i < MIRRORS; i++) {
      await cp(seed, join(small, `r${i}.git`), { recursive: true });
      await cp(synced, join(dir, "data", "git", "repos", "github.com", "many", `r${i}.git`), { recursive: true });
    }
    for (let i = 1; i < MIRRORS; i += 50) {
      await Promise.all(
        Array.from({ length: Math.min(50, MIRRORS - i) }, (_, k) =>
          client.addMirror({ name: `github.com/many/r${i + k}` }),
        ),
      );
    }
    const allDone = async (since: number) => {
      for (;;) {
        const { mirrors } = await client.listMirrors({ prefix: "github.com/many/" });
        if (
          mirrors.length >= MIRRORS &&
          mirrors.every(
            (m) =>
              m.lastAttemptAt &&
              timestampMs(m.lastAttemptAt) >= since &&
              m.lastSuccessAt &&
              timestampMs(m.lastSuccessAt) >= since,
          )
        )
          return;
        await new Promise((r) => setTimeout(r, 2000));
      }
    };
    await allDone(0);
    const cpu0 = cpuSeconds();
    const t0 = Date.now();
    for (let i = 0; i < MIRRORS; i += 50) {
      await Promise.all(
        Array.from({ length: Math.min(50, MIRRORS - i) }, (_, k) =>
          client.syncMirror({ name: `github.com/many/r${i + k}` }),
        ),
      );
    }
    await allDone(t0);
    const wall = (Date.now() - t0) / 1000;
    const cpu1 = cpuSeconds();
    console.log(
      `git: no-op sync round of ${MIRRORS} unchanged mirrors: wall ${wall.toFixed(1)} s (${(MIRRORS / wall).toFixed(0)} mirrors/s), CPU ${(cpu1.self - cpu0.self).toFixed(1)} s in node (nearhub + origin server) + ${(cpu1.children - cpu0.children).toFixed(1)} s in git children (ls-remote, and the origin's http-backend)`,
    );
  } finally {
    client.$close();
    await edge.stop();
    await sync.stop();
    await origin.close();
    await deleteNamespace(natsUrl, ns);
    await rm(dir, { recursive: true, force: true });
  }
}
