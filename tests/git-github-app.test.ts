import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { createClient, parseEnv } from "@nearhub/platform";
import { MirrorState, SyncService } from "@nearhub/proto/sync";
import { serveGitHttpBackend, startSync, syncEnv, type HttpBackend, type SyncHandle } from "@nearhub/sync";
import { adminAuth, deleteNamespace, eventually, nats, serviceEnv, tempDir, uniqueNamespace } from "@nearhub/testing";
import { importSPKI, jwtVerify } from "jose";
import { GIT_ENV as GIT } from "./processes.js";

const run = promisify(execFile);
const git = async (args: string[], cwd?: string) => (await run("git", args, { cwd, env: GIT })).stdout.trim();

describe("sync service with a GitHub App: mirror through installation tokens, pause on a refused app", () => {
  const ns = uniqueNamespace("ga");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let origin: HttpBackend;
  let api: Server;
  let apiUrl: string;
  let sync: SyncHandle;
  let exchanges = 0;
  let refuseApp = false;
  const issued = new Set<string>();

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-ghapp-");
    const pair = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      privateKeyEncoding: { type: "pkcs1", format: "pem" },
      publicKeyEncoding: { type: "spki", format: "pem" },
    });
    const keyPath = join(dir.path, "app.pem");
    await writeFile(keyPath, pair.privateKey, { mode: 0o600 });
    const publicKey = await importSPKI(pair.publicKey, "RS256");
    // GitHub's REST API as far as apps need it: the JWT is verified against the app's public key.
    api = createServer((req, res) => {
      void (async () => {
        const bearer = /^Bearer (\S+)$/.exec(String(req.headers["authorization"] ?? ""))?.[1] ?? "";
        const ok =
          !refuseApp &&
          req.method === "POST" &&
          req.url === "/app/installations/42/access_tokens" &&
          req.headers["x-github-api-version"] === "2022-11-28" &&
          (await jwtVerify(bearer, publicKey, { algorithms: ["RS256"], issuer: "7" }).then(
            ({ payload }) => (payload.exp ?? 0) - (payload.iat ?? 0) <= 600,
            () => false,
          ));
        if (!ok) {
          res.writeHead(401, { "content-type": "application/json" });
          res.end(JSON.stringify({ message: "A JSON web token could not be decoded" }));
          return;
        }
        exchanges++;
        const token = `ghs_${randomBytes(18).toString("hex")}`;
        issued.add(token);
        res.writeHead(201, { "content-type": "application/json" });
        res.end(JSON.stringify({ token, expires_at: new Date(Date.now() + 3600_000).toISOString() }));
      })();
    });
    await new Promise<void>((resolve) => api.listen(0, "127.0.0.1", resolve));
    apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
    origin = await serveGitHttpBackend({
      root: join(dir.path, "origin"),
      intercept: (req, res) => {
        const auth = String(req.headers["authorization"] ?? "");
        const good = [...issued].some((t) => auth === `Basic ${Buffer.from(`x-access-token:${t}`).toString("base64")}`);
        if (good) return false;
        res.writeHead(401, { "www-authenticate": 'Basic realm="GitHub"' }).end();
        return true;
      },
    });
    const bare = join(dir.path, "origin", "acme", "private.git");
    await git(["init", "--bare", "-q", "-b", "main", bare]);
    const wt = join(dir.path, "work");
    await git(["clone", "-q", bare, wt]);
    await writeFile(join(wt, "a.txt"), "a\n");
    await git(["add", "."], wt);
    await git(["commit", "-q", "-m", "one"], wt);
    await git(["push", "-q", "origin", "main"], wt);
    sync = await startSync(
      parseEnv(
        "sync",
        syncEnv,
        serviceEnv(natsUrl, ns, join(dir.path, "data"), {
          NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}`,
          NEARHUB_GIT_GITHUB_APPS: `github.com=7:42:${keyPath}`,
          NEARHUB_GIT_GITHUB_API_URLS: `github.com=${apiUrl}`,
          NEARHUB_GIT_SCHEDULER_TICK_MS: "500",
          NEARHUB_GIT_BACKOFF_S: "1",
        }),
      ),
    );
  });

  after(async () => {
    await sync?.stop();
    await origin?.close();
    await new Promise<void>((resolve) => (api ? api.close(() => resolve()) : resolve()));
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  test("a private mirror syncs through the app; a refused app pauses it; no token or JWT in status or events", async () => {
    const client = createClient(SyncService, `127.0.0.1:${sync.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      await client.addMirror({ name: "github.com/acme/private", intervalSeconds: 3600 });
      const first = await client.syncMirror({ name: "github.com/acme/private", wait: true, timeoutSeconds: 60 });
      assert.equal(first.finished, true);
      assert.equal(first.mirror?.state, MirrorState.IN_SYNC, first.mirror?.lastError);
      const second = await client.syncMirror({ name: "github.com/acme/private", wait: true, timeoutSeconds: 60 });
      assert.equal(second.mirror?.state, MirrorState.IN_SYNC, second.mirror?.lastError);
      assert.equal(exchanges, 1, "the second sync reused the cached installation token");

      // The app loses access: upstream refuses the token, and the API refuses the app.
      refuseApp = true;
      issued.clear();
      await client.syncMirror({ name: "github.com/acme/private" });
      const paused = await eventually(
        async () => {
          const { mirror } = await client.getMirror({ name: "github.com/acme/private" });
          return mirror?.state === MirrorState.PAUSED ? mirror : undefined;
        },
        30_000,
        "the mirror to pause",
      );
      assert.match(paused.pausedReason, /credentials.*GitHub App.*nearhub mirror resume/);
      await client.resumeMirror({ name: "github.com/acme/private" });
      const again = await eventually(
        async () => {
          const { mirror } = await client.getMirror({ name: "github.com/acme/private" });
          return mirror?.state === MirrorState.PAUSED && /answered 401/.test(mirror.lastError) ? mirror : undefined;
        },
        30_000,
        "the mirror to pause on the API's 401",
      );
      assert.match(again.lastError, /GitHub App 7 \(installation 42\).*answered 401/);
      for (const text of [again.lastError, again.pausedReason, paused.lastError, paused.pausedReason])
        assert.doesNotMatch(text, /ghs_|eyJ|BEGIN/);
    } finally {
      client.$close();
    }

    const nc = await connect({ servers: natsUrl });
    try {
      const consumer = await jetstream(nc).consumers.get(`${ns.toUpperCase()}_EVENTS`);
      const seen = new Set<string>();
      const batch = await consumer.fetch({ max_messages: 500, expires: 2000 });
      for await (const m of batch) {
        seen.add(m.subject.split(".").pop() ?? "");
        assert.doesNotMatch(new TextDecoder().decode(m.data), /ghs_|eyJ|BEGIN/, m.subject);
        if (m.info.pending === 0) break;
      }
      assert.ok(seen.has("synced") && seen.has("paused"), [...seen].join(","));
    } finally {
      await nc.close();
    }
  });
});
