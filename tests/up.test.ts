import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { once } from "node:events";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { deleteNamespace, eventually, nats, tempDir, uniqueNamespace } from "./harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const NODE_ARGS = ["--conditions=development", "--import", "tsx"];
const CLI = ["packages/cli/src/bin.ts"];

/** Runs the nearhub CLI to completion, as a user would. */
function cli(args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(process.execPath, [...NODE_ARGS, ...CLI, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** PIDs of processes whose environment names this data folder (the services `up` started). */
function processesUsing(dataDir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/environ`, "latin1").includes(`NEARHUB_DATA_DIR=${dataDir}\0`))
        pids.push(Number(entry));
    } catch {
      // gone or not ours
    }
  }
  return pids;
}

describe("nearhub up: all six services on one machine", () => {
  let natsUrl: string;
  const ns = uniqueNamespace();
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let child: ChildProcess;
  let output = "";
  let edgeUrl = "";
  let metricsUrls: string[] = [];

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    child = spawn(
      process.execPath,
      [...NODE_ARGS, ...CLI, "up", "--data", dir.path, "--port", "0", "--ready-timeout", "120s"],
      {
        cwd: root,
        env: { ...process.env, NATS_URL: natsUrl, NEARHUB_NAMESPACE: ns, LOG_LEVEL: "info" },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
    await eventually(
      async () => (/nearhub ready in/.test(output) ? true : undefined),
      150_000,
      `"ready" from nearhub up; output so far:\n${output}`,
    );
    edgeUrl = /edge\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1] ?? "";
    metricsUrls = [...output.matchAll(/metrics (http:\/\/127\.0\.0\.1:\d+\/metrics)/g)].map((m) => m[1] ?? "");
  });

  after(async () => {
    if (child.exitCode === null) {
      child.kill("SIGKILL");
      for (const pid of processesUsing(dir.path)) process.kill(pid, "SIGKILL");
    }
    await deleteNamespace(natsUrl, ns);
    await dir.cleanup();
  });

  test("prints every URL and ready; /healthz shows six services SERVING", async () => {
    assert.match(edgeUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(metricsUrls.length, 5, output);
    const response = await fetch(`${edgeUrl}/healthz`);
    assert.equal(response.status, 200);
    const body = (await response.json()) as { status: string; services: Record<string, string> };
    assert.equal(body.status, "SERVING");
    assert.deepEqual(Object.keys(body.services).sort(), [
      "audit",
      "edge",
      "indexing",
      "inference-gateway",
      "storage",
      "sync",
    ]);
    for (const state of Object.values(body.services)) assert.equal(state, "SERVING");
  });

  test("/metrics answers on every service with RED and process metrics", async () => {
    for (const url of [...metricsUrls, `${edgeUrl}/metrics`]) {
      const response = await fetch(url);
      assert.equal(response.status, 200, url);
      const text = await response.text();
      assert.match(text, /nearhub_service_ready\{service="[a-z-]+"\} 1/, url);
      assert.match(text, /process_resident_memory_bytes/, url);
      assert.match(text, /nearhub_rpc_server_duration_seconds/, url);
    }
  });

  test("the CLI manages mirrors and searches through the edge", () => {
    // `nearhub up` keeps a bootstrap admin token in its data folder, readable only by its user;
    // the CLI finds it there. Without it, writes are refused with what to do.
    assert.equal(statSync(join(dir.path, "admin-token")).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir.path, "internal-key")).mode & 0o777, 0o600);
    const anonymous = cli(["mirror", "add", "github.com/acme/widgets"], {
      NEARHUB_URL: edgeUrl,
      NEARHUB_DATA_DIR: join(dir.path, "elsewhere"),
    });
    assert.equal(anonymous.code, 1);
    assert.match(anonymous.stderr, /needs a signed-in caller.*set NEARHUB_TOKEN/);
    const env = { NEARHUB_URL: edgeUrl, NEARHUB_DATA_DIR: dir.path };
    const add = cli(["mirror", "add", "github.com/acme/widgets", "--interval", "5m"], env);
    assert.equal(add.code, 0, add.stderr);
    assert.match(add.stdout, /added: github\.com\/acme\/widgets\s+pending\b.*every 300s/);
    const again = cli(["mirror", "add", "github.com/acme/widgets", "--interval", "5m"], env);
    assert.match(again.stdout, /already mirrored/);
    const list = cli(["mirror", "list", "--json"], env);
    assert.equal(list.code, 0);
    assert.equal(
      (JSON.parse(list.stdout) as { mirrors: Array<{ name: string }> }).mirrors[0]?.name,
      "github.com/acme/widgets",
    );
    const found = cli(["search", "widg"], env);
    assert.equal(found.code, 0);
    const bad = cli(["mirror", "add", "github.com/acme/w", "--interval", "10s"], env);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /mirror interval 10s is below the 60s minimum/);
    const usage = cli(["mirror", "add", "github.com/acme/w", "--interval", "5x"], env);
    assert.equal(usage.code, 1);
    assert.match(usage.stderr, /duration "5x" must look like 90s, 5m, 6h or 1d/);
    const unknown = cli(["mirror", "add", "--bogus"], env);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /Unknown option '--bogus'/);
    const removed = cli(["mirror", "remove", "github.com/acme/widgets"], env);
    assert.equal(removed.code, 0, removed.stderr);
    const unreachable = cli(["mirror", "list"], { NEARHUB_URL: "http://127.0.0.1:1" });
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /cannot reach nearhub at http:\/\/127\.0\.0\.1:1/);
  });

  test("the edge answers hostile HTTP with clear errors", async () => {
    const post = (body: string, headers: Record<string, string> = { "content-type": "application/json" }) =>
      fetch(`${edgeUrl}/api/mirrors`, { method: "POST", headers, body });
    let r = await post("{not json");
    assert.equal(r.status, 400);
    assert.match(((await r.json()) as { error: string }).error, /not valid JSON/);
    r = await post(JSON.stringify({ name: "a".repeat(200_000) }));
    assert.equal(r.status, 413);
    r = await post("name=x", { "content-type": "application/x-www-form-urlencoded" });
    assert.equal(r.status, 415);
    r = await post(JSON.stringify({ name: 42 }));
    assert.equal(r.status, 400);
    assert.match(((await r.json()) as { error: string }).error, /name: /);
    r = await fetch(`${edgeUrl}/api/mirrors/github.com/..%2F..%2Fetc%2Fpasswd`);
    assert.equal(r.status, 400);
    r = await fetch(`${edgeUrl}/api/search?limit=1000`);
    assert.equal(r.status, 400);
    r = await fetch(`${edgeUrl}/api/search?q=${encodeURIComponent('"NEAR( OR * ^:')}`);
    assert.equal(r.status, 200);
    r = await fetch(`${edgeUrl}/api/search?kind=spaceship`);
    assert.equal(r.status, 400);
    r = await fetch(`${edgeUrl}/no/such/route`);
    assert.equal(r.status, 404);
    r = await fetch(`${edgeUrl}/healthz`, { method: "POST" });
    assert.equal(r.status, 405);
    r = await fetch(`${edgeUrl}/healthz`, { headers: { "x-huge": "a".repeat(64 * 1024) } });
    assert.equal(r.status, 431);
    r = await fetch(`${edgeUrl}/%E0%A4%A`);
    assert.equal(r.status, 400);
  });

  test("Ctrl-C stops every service and exits 0, leaving no process behind", async () => {
    assert.ok(processesUsing(dir.path).length >= 6);
    const exited = once(child, "exit");
    child.kill("SIGINT");
    const [code] = (await exited) as [number | null];
    assert.equal(code, 0, output);
    assert.deepEqual(processesUsing(dir.path), []);
  });
});

describe("nearhub up without NATS_URL starts its own nats-server", () => {
  test("ready with a child nats-server, and Ctrl-C stops it too", async () => {
    const dir = await tempDir();
    const natsPort = 30000 + Math.floor(Math.random() * 20000);
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env["NATS_URL"];
    const child = spawn(
      process.execPath,
      [
        ...NODE_ARGS,
        ...CLI,
        "up",
        "--data",
        dir.path,
        "--port",
        "0",
        "--nats-port",
        String(natsPort),
        "--ready-timeout",
        "120s",
      ],
      { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
    try {
      await eventually(
        async () => (/nearhub ready in/.test(output) ? true : undefined),
        150_000,
        `ready; output:\n${output}`,
      );
      assert.match(output, new RegExp(`started nats-server \\(JetStream\\) on nats://127\\.0\\.0\\.1:${natsPort}`));
      const edgeUrl = /edge\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1] ?? "";
      assert.equal((await fetch(`${edgeUrl}/healthz`)).status, 200);
      const exited = once(child, "exit");
      child.kill("SIGINT");
      const [code] = (await exited) as [number | null];
      assert.equal(code, 0, output);
      assert.deepEqual(processesUsing(dir.path), []);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      for (const pid of processesUsing(dir.path)) process.kill(pid, "SIGKILL");
      await dir.cleanup();
    }
  });
});

describe("a service with bad configuration says what is wrong and exits non-zero", () => {
  const run = (env: Record<string, string>) =>
    spawnSync(process.execPath, [...NODE_ARGS, "services/sync/src/main.ts"], {
      cwd: root,
      env: { ...process.env, LOG_LEVEL: "silent", ...env },
      encoding: "utf8",
      timeout: 60_000,
    });

  test("a malformed NATS_URL and a bad port are listed together", () => {
    const result = run({ NATS_URL: "http://nope", NEARHUB_GRPC_PORT: "99999" });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /invalid configuration \(2 problems\)/);
    assert.match(result.stderr, /NATS_URL must be nats:\/\/host:port/);
    assert.match(result.stderr, /NEARHUB_GRPC_PORT must be a whole number from 0 to 65535 \(got "99999"\)/);
  });

  test("an unreachable NATS server is named", () => {
    const result = run({
      NATS_URL: "nats://127.0.0.1:1",
      NEARHUB_GRPC_PORT: "0",
      NEARHUB_NATS_CONNECT_TIMEOUT_MS: "1000",
    });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /cannot reach NATS at nats:\/\/127\.0\.0\.1:1/);
  });
});
