import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { readFile, mkdir, writeFile } from "node:fs/promises";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import {
  Code,
  ConfigError,
  NearhubError,
  TransportSecurity,
  createClient,
  createLogger,
  parseEnv,
} from "@nearhub/platform";
import { RegistryService, RepoKind } from "@nearhub/proto/registry";
import { SyncService } from "@nearhub/proto/sync";
import { startStorage, storageEnv } from "@nearhub/storage";
import { serveGitHttpBackend, startSync, syncEnv, type HttpBackend, type SyncHandle } from "@nearhub/sync";
import { createTestPki, type TestPki } from "@nearhub/testing";
import { adminAuth, adminToken, deleteNamespace, nats, serviceEnv, tempDir, uniqueNamespace } from "./harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);
const GIT_ENV = {
  PATH: process.env["PATH"] ?? "/usr/bin:/bin",
  HOME: "/nonexistent",
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_TERMINAL_PROMPT: "0",
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.com",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.com",
};

/** Opens a TLS connection and reports the negotiated protocol or the error. */
function handshake(
  port: number,
  options: ConnectionOptions,
): Promise<{ protocol: string | null } | { error: NodeJS.ErrnoException }> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: "127.0.0.1", port, ...options });
    socket.once("secureConnect", () => {
      const protocol = socket.getProtocol();
      socket.destroy();
      resolve({ protocol });
    });
    socket.once("error", (error) => resolve({ error }));
  });
}

/** The nearhub CLI as a user runs it, with its own environment. */
function cli(args: string[], env: Record<string, string>) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(
      process.execPath,
      ["--conditions=development", "--import", "tsx", "packages/cli/src/bin.ts", ...args],
      { cwd: root, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...env } },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("TLS between services, the CLI and git over https", () => {
  const ns = uniqueNamespace("tls");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let pki: TestPki;
  let origin: HttpBackend;
  let storage: Awaited<ReturnType<typeof startStorage>>;
  let sync: SyncHandle;
  let edge: Edge;
  let edgeUrl: string;
  /** Every service: its certificate; the internal ones require client certificates (mutual TLS). */
  let tlsEnv: (clientAuth: "none" | "require") => Record<string, string>;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-tls-");
    pki = await createTestPki();
    tlsEnv = (clientAuth) => ({
      NEARHUB_TLS_CERT: pki.server.cert,
      NEARHUB_TLS_KEY: pki.server.key,
      NEARHUB_TLS_CA: pki.ca,
      NEARHUB_TLS_CLIENT_AUTH: clientAuth,
    });
    const originRoot = join(dir.path, "origin");
    await mkdir(join(originRoot, "acme"), { recursive: true });
    const bare = join(originRoot, "acme", "rocket.git");
    await run("git", ["init", "--bare", "-q", "-b", "main", bare], { env: GIT_ENV });
    const work = join(dir.path, "work");
    await run("git", ["clone", "-q", bare, work], { env: GIT_ENV });
    await writeFile(join(work, "README.md"), "over TLS\n");
    await run("git", ["add", "."], { cwd: work, env: GIT_ENV });
    await run("git", ["commit", "-q", "-m", "first"], { cwd: work, env: GIT_ENV });
    await run("git", ["push", "-q", "origin", "main"], { cwd: work, env: GIT_ENV });
    origin = await serveGitHttpBackend({ root: originRoot });

    const base = (name: string) => serviceEnv(natsUrl, ns, join(dir.path, name));
    storage = await startStorage(parseEnv("storage", storageEnv, { ...base("storage"), ...tlsEnv("require") }));
    sync = await startSync(
      parseEnv("sync", syncEnv, {
        ...base("sync"),
        ...tlsEnv("require"),
        NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}`,
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
      }),
    );
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...base("edge"),
        ...tlsEnv("none"),
        NEARHUB_SYNC_ADDR: `127.0.0.1:${sync.grpcPort}`,
        NEARHUB_SYNC_GIT_URL: `https://127.0.0.1:${sync.gitHttpPort}`,
        NEARHUB_STORAGE_ADDR: `127.0.0.1:${storage.grpcPort}`,
        // Not under test here: their health checks (service "") land on storage's server, so
        // /healthz answers 200 and the CLI prints every service.
        NEARHUB_INDEXING_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_AUDIT_ADDR: `127.0.0.1:${storage.grpcPort}`,
        NEARHUB_INFERENCE_ADDR: `127.0.0.1:${storage.grpcPort}`,
      }),
    );
    edgeUrl = `https://127.0.0.1:${edge.httpPort}`;
  });

  after(async () => {
    await edge?.stop();
    await sync?.stop();
    await storage?.stop();
    await origin?.close();
    await deleteNamespace(natsUrl, ns);
    await pki?.cleanup();
    await dir?.cleanup();
  });

  test("every listener of the running services refuses TLS 1.1 and negotiates TLS 1.2 and 1.3", async () => {
    const ca = await readFile(pki.ca);
    const client = { cert: await readFile(pki.client.cert), key: await readFile(pki.client.key) };
    const listeners: Array<[string, number, string[]]> = [
      ["edge HTTP", edge.httpPort, []],
      ["edge gRPC", edge.host.grpcPort, ["h2"]],
      ["sync gRPC", sync.grpcPort, ["h2"]],
      ["sync git HTTP", sync.gitHttpPort, []],
      ["sync metrics", sync.metricsPort, []],
      ["storage gRPC", storage.grpcPort, ["h2"]],
      ["storage metrics", storage.metricsPort, []],
    ];
    for (const [name, port, alpn] of listeners) {
      const old = await handshake(port, {
        minVersion: "TLSv1",
        maxVersion: "TLSv1.1",
        ciphers: "DEFAULT@SECLEVEL=0",
        rejectUnauthorized: false,
        ALPNProtocols: alpn,
      });
      assert.equal("error" in old ? old.error.code : old.protocol, "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION", name);
      for (const version of ["TLSv1.2", "TLSv1.3"] as const) {
        const result = await handshake(port, {
          ca,
          ...client,
          servername: "localhost",
          minVersion: version,
          maxVersion: version,
          ALPNProtocols: alpn,
        });
        assert.deepEqual(result, { protocol: version }, `${name} over ${version}`);
      }
    }
  });

  test("the CLI reads the https edge's health (--ca); the edge reaches sync and storage over mutual TLS gRPC", async () => {
    const result = await cli(["--ca", pki.ca, "health", "--json"], { NEARHUB_URL: edgeUrl });
    assert.equal(result.code, 0, `${result.stdout}\n${result.stderr}`);
    const health = JSON.parse(result.stdout) as { status: string; services: Record<string, string> };
    assert.equal(health.services["sync"], "SERVING");
    assert.equal(health.services["storage"], "SERVING");
    const viaEnv = await cli(["health"], { NEARHUB_URL: edgeUrl, NEARHUB_CA: pki.ca });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.match(viaEnv.stdout, /^sync\s+SERVING$/m);
  });

  test("a mirror added through the https edge syncs, and git clones it over https (edge → sync git over mutual TLS)", async () => {
    const ca = await readFile(pki.ca);
    const call = (method: string, path: string, body?: unknown) =>
      new Promise<{ status: number; json: Record<string, unknown> }>((resolve, reject) => {
        const text = body === undefined ? undefined : JSON.stringify(body);
        const req = httpsRequest(
          `${edgeUrl}${path}`,
          {
            method,
            ca,
            headers: { ...adminAuth(ns), ...(text ? { "content-type": "application/json" } : {}) },
          },
          (res) => {
            let data = "";
            res.setEncoding("utf8");
            res.on("data", (d: string) => (data += d));
            res.on("end", () =>
              resolve({ status: res.statusCode ?? 0, json: JSON.parse(data) as Record<string, unknown> }),
            );
          },
        );
        req.on("error", reject);
        req.end(text);
      });
    const added = await call("POST", "/api/mirrors", { name: "github.com/acme/rocket", interval_seconds: 3600 });
    assert.ok(added.status === 200 || added.status === 201, JSON.stringify(added));
    const synced = await call("POST", "/api/mirrors/github.com/acme/rocket/sync?wait=1&timeout=60");
    // 200 when it synced, 202 when it was already in sync.
    assert.ok(synced.status === 200 || synced.status === 202, JSON.stringify(synced));
    assert.equal(synced.json["finished"], true, JSON.stringify(synced));

    const clone = join(dir.path, "clone");
    const url = new URL(`${edgeUrl}/github.com/acme/rocket.git`);
    url.username = "nearhub";
    url.password = adminToken(ns);
    await run("git", ["-c", `http.sslCAInfo=${pki.ca}`, "clone", "-q", url.href, clone], { env: GIT_ENV });
    assert.equal(await readFile(join(clone, "README.md"), "utf8"), "over TLS\n");
    const untrusted = await run("git", ["clone", "-q", url.href, join(dir.path, "clone2")], { env: GIT_ENV }).then(
      () => "cloned",
      (error: { stderr: string }) => error.stderr,
    );
    assert.match(
      untrusted,
      /SSL certificate problem|certificate verify failed|server certificate verification failed/i,
    );
  });

  test("the CLI without the CA refuses the edge's certificate and says it cannot reach it", async () => {
    const result = await cli(["mirror", "list"], { NEARHUB_URL: edgeUrl });
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /cannot reach nearhub at https:\/\/127\.0\.0\.1:\d+\/? \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\)/,
    );
  });

  test("a missing --ca file is reported by name", async () => {
    const result = await cli(["--ca", join(dir.path, "nope.pem"), "mirror", "list"], { NEARHUB_URL: edgeUrl });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /CA bundle: there is no file at .*nope\.pem/);
  });

  test("the CLI uploads to storage over mutual TLS gRPC with NEARHUB_CA and a client certificate", async () => {
    const file = join(dir.path, "weights.bin");
    await writeFile(file, Buffer.alloc(100_000, 7));
    const env = {
      NEARHUB_URL: edgeUrl,
      NEARHUB_CA: pki.ca,
      NEARHUB_CLIENT_CERT: pki.client.cert,
      NEARHUB_CLIENT_KEY: pki.client.key,
      NEARHUB_TOKEN: adminToken(ns),
    };
    const storageAddr = `127.0.0.1:${storage.grpcPort}`;
    const uploaded = await cli(["upload", "acme/tls-model", file, "--storage", storageAddr, "--json"], env);
    assert.equal(uploaded.code, 0, uploaded.stderr);
    const registry = createClient(RegistryService, `localhost:${storage.grpcPort}`, {
      metadata: adminAuth(ns),
      credentials: TransportSecurity.client({
        ca: pki.ca,
        cert: pki.client.cert,
        key: pki.client.key,
      }).grpcChannelCredentials(),
    });
    try {
      const { revision } = await registry.getRevision({ repo: { kind: RepoKind.MODEL, id: "acme/tls-model" } });
      assert.deepEqual(
        revision?.entries.map((e) => [e.path, Number(e.size)]),
        [["weights.bin", 100_000]],
      );
    } finally {
      registry.$close();
    }
    const { NEARHUB_CLIENT_CERT: _c, NEARHUB_CLIENT_KEY: _k, ...withoutCert } = env;
    const refused = await cli(["upload", "acme/tls-model", file, "--storage", storageAddr], withoutCert);
    assert.notEqual(refused.code, 0, "storage requires a client certificate");
  });

  test("sync refuses callers without a client certificate and plain-text callers", async () => {
    for (const credentials of [
      TransportSecurity.client({ ca: pki.ca }).grpcChannelCredentials(),
      TransportSecurity.plain().grpcChannelCredentials(),
    ]) {
      const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { credentials, maxAttempts: 1 });
      try {
        await assert.rejects(client.listMirrors({}), (error: unknown) => {
          assert.equal(NearhubError.from(error).code, Code.Unavailable);
          return true;
        });
      } finally {
        client.$close();
      }
    }
  });
});

describe("TLS at service start-up", () => {
  const ns = uniqueNamespace("tlss");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let pki: TestPki;

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-tls-start-");
    pki = await createTestPki();
  });
  after(async () => {
    await deleteNamespace(natsUrl, ns);
    await pki?.cleanup();
    await dir?.cleanup();
  });

  test("an expired certificate stops the start with a message naming the file and its dates", async () => {
    const config = parseEnv("sync", syncEnv, {
      ...serviceEnv(natsUrl, ns, join(dir.path, "expired")),
      NEARHUB_TLS_CERT: pki.expired.cert,
      NEARHUB_TLS_KEY: pki.expired.key,
    });
    await assert.rejects(startSync(config), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, /^sync: invalid configuration/);
      assert.ok(error.message.includes(pki.expired.cert), error.message);
      assert.match(error.message, /expired: valid from 2020-01-01T00:00:00\.000Z to 2020-02-01T00:00:00\.000Z/);
      return true;
    });
  });

  test("a plain-text service on 0.0.0.0 warns at start-up; on 127.0.0.1 it does not", async () => {
    const lines: Array<Record<string, unknown>> = [];
    const start = async (host: string) => {
      const logger = createLogger({
        service: "storage",
        level: "warn",
        destination: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) },
      });
      const config = parseEnv("storage", storageEnv, {
        ...serviceEnv(natsUrl, ns, join(dir.path, `plain-${host}`)),
        NEARHUB_BIND_HOST: host,
      });
      const service = await startStorage(config, { logger });
      await service.stop();
    };
    await start("127.0.0.1");
    assert.equal(lines.filter((l) => String(l["msg"]).startsWith("plain text")).length, 0);
    await start("0.0.0.0");
    const warning = lines.find((l) => String(l["msg"]).startsWith("plain text"));
    assert.ok(warning, JSON.stringify(lines));
    assert.equal(warning["level"], "warn");
    assert.match(String(warning["msg"]), /plain text on 0\.0\.0\.0: storage gRPC, storage HTTP .*NEARHUB_TLS_CERT/);
  });
});
