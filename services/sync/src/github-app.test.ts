import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";
import { ConfigError, parseEnv } from "@nearhub/platform";
import { decodeProtectedHeader, importSPKI, jwtVerify } from "jose";
import { syncEnv } from "./config.js";
import { GitFetcher, type MirrorSpec } from "./git-fetcher.js";
import { serveGitHttpBackend, type HttpBackend } from "./git-http-backend.js";
import { RepoLayout, readRefs } from "./git-repo.js";
import { GitError } from "./git-runner.js";
import { UpstreamCredentials, loadAppKey, resolveGitHubApps, type ResolvedGitHubApp } from "./github-app.js";
import { git } from "./test-git.js";

const APP_ID = "12345";
const INSTALLATION = "67890";

function rsaPair() {
  return generateKeyPairSync("rsa", {
    modulusLength: 2048,
    // GitHub hands out PKCS#1 keys ("BEGIN RSA PRIVATE KEY").
    privateKeyEncoding: { type: "pkcs1", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });
}

/** A local stand-in for GitHub's REST API: verifies the app JWT and issues installation tokens. */
class GitHubApiDouble {
  server!: Server;
  url = "";
  exchanges = 0;
  refusals: string[] = [];
  /** Token → expiry (ms, on the test clock). */
  readonly issued = new Map<string, number>();
  answer5xx = false;

  constructor(
    private readonly publicKeyPem: string,
    private readonly clock: () => number,
  ) {}

  async start(): Promise<void> {
    const publicKey = await importSPKI(this.publicKeyPem, "RS256");
    this.server = createServer((req, res) => {
      void (async () => {
        const refuse = (status: number, message: string) => {
          this.refusals.push(`${status} ${message}`);
          res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ message }));
        };
        const m = /^\/app\/installations\/(\d+)\/access_tokens$/.exec(req.url ?? "");
        if (req.method !== "POST" || !m) return refuse(404, "Not Found");
        if (req.headers["accept"] !== "application/vnd.github+json") return refuse(415, "wrong Accept");
        if (req.headers["x-github-api-version"] !== "2022-11-28") return refuse(400, "wrong API version");
        const bearer = /^Bearer (\S+)$/.exec(String(req.headers["authorization"] ?? ""))?.[1];
        if (!bearer) return refuse(401, "A JSON web token could not be decoded");
        try {
          assert.equal(decodeProtectedHeader(bearer).alg, "RS256");
          const { payload } = await jwtVerify(bearer, publicKey, { algorithms: ["RS256"], issuer: APP_ID });
          assert.ok(typeof payload.iat === "number" && typeof payload.exp === "number");
          assert.ok(payload.exp > payload.iat && payload.exp - payload.iat <= 600, "exp at most 10 minutes");
          assert.ok(payload.iat <= Math.floor(this.clock() / 1000) - 30, "iat set back against clock skew");
        } catch {
          return refuse(401, "A JSON web token could not be decoded");
        }
        if (this.answer5xx) return refuse(502, "Server Error");
        if (m[1] !== INSTALLATION) return refuse(404, "Not Found");
        this.exchanges++;
        const token = `ghs_${randomBytes(18).toString("hex")}`;
        const expires = this.clock() + 3600_000;
        this.issued.set(token, expires);
        res
          .writeHead(201, { "content-type": "application/json" })
          .end(
            JSON.stringify({ token, expires_at: new Date(expires).toISOString(), permissions: { contents: "read" } }),
          );
      })();
    });
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Whether git's Authorization header carries a live installation token as GitHub wants it. */
  accepts(header: string | undefined): boolean {
    for (const [token, expires] of this.issued) {
      if (expires <= this.clock()) continue;
      if (header === `Basic ${Buffer.from(`x-access-token:${token}`).toString("base64")}`) return true;
    }
    return false;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

describe("GitHub App credentials against a GitHub API double and git http-backend", () => {
  let dir: string;
  let origin: HttpBackend;
  let api: GitHubApiDouble;
  let keyPath: string;
  let wrongKeyPath: string;
  let now = Date.now();
  const clock = () => now;
  let originSawGoodAuth = 0;
  let originRefused = 0;
  const spec: MirrorSpec = {
    name: "github.com/acme/app",
    upstream: "github.com",
    owner: "acme",
    repo: "app",
    refs: "heads,tags",
  };

  const app = (overrides: Partial<ResolvedGitHubApp> = {}): ResolvedGitHubApp => ({
    appId: APP_ID,
    installationId: INSTALLATION,
    keyPath,
    privateKey: loadAppKey(keyPath),
    apiUrl: api.url,
    ...overrides,
  });
  const setup = (credentials: UpstreamCredentials, data: string) =>
    new GitFetcher({
      layout: new RepoLayout(join(dir, data)),
      upstreams: new Map([["github.com", origin.url]]),
      tokens: new Map(),
      credentials,
      lsRemoteTimeoutMs: 20_000,
      fetchTimeoutMs: 20_000,
      cloneTimeoutMs: 20_000,
      lowSpeedLimit: 1,
      lowSpeedTimeS: 30,
    });
  const commit = async (message: string) => {
    await writeFile(join(dir, "work", "file.txt"), `${message}\n`);
    await git(["add", "-A"], join(dir, "work"));
    await git(["commit", "-q", "-m", message], join(dir, "work"));
    await git(["push", "-q", "origin", "main"], join(dir, "work"));
    return git(["rev-parse", "HEAD"], join(dir, "work"));
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "nearhub-ghapp-"));
    const pair = rsaPair();
    keyPath = join(dir, "app.pem");
    await writeFile(keyPath, pair.privateKey, { mode: 0o600 });
    wrongKeyPath = join(dir, "other.pem");
    await writeFile(wrongKeyPath, rsaPair().privateKey, { mode: 0o600 });
    api = new GitHubApiDouble(pair.publicKey, clock);
    await api.start();
    origin = await serveGitHttpBackend({
      root: join(dir, "origin"),
      intercept: (req, res) => {
        if (api.accepts(req.headers["authorization"])) {
          originSawGoodAuth++;
          return false;
        }
        originRefused++;
        res.writeHead(401, { "www-authenticate": 'Basic realm="GitHub"' }).end();
        return true;
      },
    });
    await mkdir(join(dir, "origin", "acme"), { recursive: true });
    await git(["init", "--bare", "-q", "-b", "main", join(dir, "origin", "acme", "app.git")]);
    await git(["init", "-q", "-b", "main", join(dir, "work")]);
    await git(["remote", "add", "origin", join(dir, "origin", "acme", "app.git")], join(dir, "work"));
    await commit("first");
  });

  after(async () => {
    await origin.close();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    api.answer5xx = false;
  });

  test("a mirror syncs with the installation token; later syncs reuse it; an expiring one is refreshed", async () => {
    const credentials = new UpstreamCredentials(new Map(), new Map([["github.com", app()]]), { now: clock });
    const fetcher = setup(credentials, "data-ok");
    const before = api.exchanges;

    const first = await fetcher.sync(spec);
    assert.equal(first.firstClone, true);
    const tip = await git(["rev-parse", "HEAD"], join(dir, "work"));
    assert.equal((await readRefs(new RepoLayout(join(dir, "data-ok")).pathOf(spec.name))).get("refs/heads/main"), tip);
    assert.equal(api.exchanges - before, 1, "one token exchange for the first sync");
    assert.ok(originSawGoodAuth > 0, "the origin saw Basic x-access-token:<installation token>");

    const next = await commit("second");
    const second = await fetcher.sync(spec);
    assert.equal(second.noop, false);
    assert.equal(second.changes[0]?.newSha, next);
    assert.equal(api.exchanges - before, 1, "the cached token is reused");

    // 56 minutes later the token has less than 5 minutes left: a new one is minted before git runs.
    now += 56 * 60_000;
    const third = await commit("third");
    const refreshed = await fetcher.sync(spec);
    assert.equal(refreshed.changes[0]?.newSha, third);
    assert.equal(api.exchanges - before, 2, "a token near its expiry is replaced");
  });

  test("concurrent callers share one exchange", async () => {
    const credentials = new UpstreamCredentials(new Map(), new Map([["github.com", app()]]), { now: clock });
    const before = api.exchanges;
    const tokens = await Promise.all(Array.from({ length: 8 }, () => credentials.token("github.com")));
    assert.equal(api.exchanges - before, 1);
    assert.equal(new Set(tokens).size, 1);
    assert.match(tokens[0] ?? "", /^ghs_/);
    assert.equal(await credentials.token("gitlab.com"), undefined, "an upstream without credentials gets none");
  });

  test("a token upstream refuses fails the sync as an auth failure and is minted afresh next time", async () => {
    const credentials = new UpstreamCredentials(new Map(), new Map([["github.com", app()]]), { now: clock });
    const fetcher = setup(credentials, "data-revoked");
    const token = await credentials.token("github.com");
    assert.ok(token);
    api.issued.delete(token); // revoked on GitHub's side
    const refusedBefore = originRefused;
    const error = await fetcher.sync(spec).then(
      () => assert.fail("sync with a revoked token succeeded"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof GitError);
    assert.equal(error.kind, "auth");
    assert.ok(!error.message.includes(token), "the token is not in the error");
    assert.ok(originRefused > refusedBefore, "the origin refused the revoked token");
    const before = api.exchanges;
    const ok = await fetcher.sync(spec);
    assert.equal(ok.firstClone, true);
    assert.equal(api.exchanges - before, 1, "the refused token was dropped and a new one minted");
  });

  test("a wrong key: the API answers 401 and the sync fails as an auth failure naming the app, with no secret", async () => {
    const credentials = new UpstreamCredentials(
      new Map(),
      new Map([["github.com", app({ keyPath: wrongKeyPath, privateKey: loadAppKey(wrongKeyPath) })]]),
      { now: clock },
    );
    const fetcher = setup(credentials, "data-wrong-key");
    const refusedBefore = api.refusals.length;
    const error = await fetcher.sync(spec).then(
      () => assert.fail("sync with a wrong key succeeded"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof GitError);
    assert.equal(error.kind, "auth", "the engine pauses the mirror on auth failures");
    assert.match(error.message, /GitHub App 12345 \(installation 67890\)/);
    assert.match(error.message, /answered 401/);
    assert.match(error.message, /private key/);
    assert.doesNotMatch(error.message, /eyJ|ghs_|BEGIN/);
    assert.equal(api.refusals.length - refusedBefore, 1);
  });

  test("an unknown installation (404) and a failing API (502) fail with the status and the app", async () => {
    const unknown = new UpstreamCredentials(new Map(), new Map([["github.com", app({ installationId: "999" })]]));
    await assert.rejects(
      unknown.token("github.com"),
      (e: unknown) =>
        e instanceof GitError &&
        e.kind === "auth" &&
        /installation 999\).*answered 404.*check the installation id/.test(e.message),
    );
    api.answer5xx = true;
    const failing = new UpstreamCredentials(new Map(), new Map([["github.com", app()]]));
    await assert.rejects(
      failing.token("github.com"),
      (e: unknown) => e instanceof GitError && e.kind === "other" && /answered 502/.test(e.message),
    );
    const unreachable = new UpstreamCredentials(
      new Map(),
      new Map([["github.com", app({ apiUrl: "http://127.0.0.1:1" })]]),
    );
    await assert.rejects(
      unreachable.token("github.com"),
      (e: unknown) =>
        e instanceof GitError && e.kind === "other" && /cannot reach http:\/\/127\.0\.0\.1:1\//.test(e.message),
    );
  });

  test("configured tokens still reach git unchanged", async () => {
    const credentials = new UpstreamCredentials(new Map([["github.com", "ghp_static"]]));
    assert.equal(await credentials.token("github.com"), "ghp_static");
  });

  describe("configuration", () => {
    const parse = (env: Record<string, string>) => parseEnv("sync", syncEnv, env);
    const problems = (env: Record<string, string>): string => {
      try {
        parse(env);
      } catch (error) {
        assert.ok(error instanceof ConfigError);
        return error.problems.join("\n");
      }
      return assert.fail("configuration was accepted");
    };

    test("a valid app parses, and its API defaults by upstream", () => {
      const config = parse({
        NEARHUB_GIT_UPSTREAMS: "github.com=https://github.com,ghe.corp=https://ghe.corp.example",
        NEARHUB_GIT_GITHUB_APPS: `github.com=${APP_ID}:${INSTALLATION}:${keyPath}, ghe.corp=7:8:${keyPath}`,
      });
      const apps = resolveGitHubApps(config);
      assert.equal(apps.get("github.com")?.apiUrl, "https://api.github.com");
      assert.equal(apps.get("github.com")?.appId, APP_ID);
      assert.equal(apps.get("github.com")?.installationId, INSTALLATION);
      assert.equal(apps.get("ghe.corp")?.apiUrl, "https://ghe.corp.example/api/v3");
      const local = parse({
        NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}`,
        NEARHUB_GIT_GITHUB_APPS: `github.com=${APP_ID}:${INSTALLATION}:${keyPath}`,
        NEARHUB_GIT_GITHUB_API_URLS: `github.com=${api.url}/`,
      });
      assert.equal(resolveGitHubApps(local).get("github.com")?.apiUrl, api.url);
    });

    test("hostile and broken values are refused with what to fix", async () => {
      const notKey = join(dir, "not-a-key.pem");
      await writeFile(notKey, "hello\n");
      const ecKey = join(dir, "ec.pem");
      await writeFile(
        ecKey,
        generateKeyPairSync("ec", {
          namedCurve: "P-256",
          privateKeyEncoding: { type: "pkcs8", format: "pem" },
          publicKeyEncoding: { type: "spki", format: "pem" },
        }).privateKey,
      );
      const huge = join(dir, "huge.pem");
      await writeFile(huge, "A".repeat(70 * 1024));
      const cases: Array<[string, RegExp]> = [
        [
          `github.com=abc:${INSTALLATION}:${keyPath}`,
          /NEARHUB_GIT_GITHUB_APPS .*app id and installation id must be positive whole numbers/,
        ],
        [`github.com=${APP_ID}:-1:${keyPath}`, /positive whole numbers/],
        [`github.com=${APP_ID}:${INSTALLATION}`, /must be upstream=appId:installationId:\/path\/to\/key.pem/],
        [`=${APP_ID}:${INSTALLATION}:${keyPath}`, /must be upstream=appId/],
        [`../../etc=${APP_ID}:${INSTALLATION}:${keyPath}`, /must be upstream=appId/],
        [`github.com=${APP_ID}:${INSTALLATION}:../../etc/passwd`, /must be absolute/],
        [
          `github.com=${APP_ID}:${INSTALLATION}:${join(dir, "missing.pem")}`,
          /cannot read the private key file .*missing\.pem \(ENOENT\)/,
        ],
        [`github.com=${APP_ID}:${INSTALLATION}:${dir}`, /cannot read the private key file/],
        [`github.com=${APP_ID}:${INSTALLATION}:${notKey}`, /is not a PEM private key/],
        [`github.com=${APP_ID}:${INSTALLATION}:${ecKey}`, /must hold an RSA key/],
        [`github.com=${APP_ID}:${INSTALLATION}:${huge}`, /is over 65536 bytes/],
        [`github.com=1:2:${keyPath},github.com=3:4:${keyPath}`, /names upstream github.com twice/],
        ["x".repeat(70 * 1024), /NEARHUB_GIT_GITHUB_APPS must be at most 64 KiB/],
      ];
      for (const [value, expected] of cases) {
        const text = problems({ NEARHUB_GIT_GITHUB_APPS: value });
        assert.match(text, expected, value.slice(0, 100));
        assert.doesNotMatch(text, /BEGIN|PRIVATE KEY-----/, "key material is never shown");
      }
      assert.match(
        problems({ NEARHUB_GIT_GITHUB_API_URLS: "github.com=ftp://x" }),
        /NEARHUB_GIT_GITHUB_API_URLS entry "github.com=ftp:\/\/x" must be upstream=url/,
      );
      assert.match(
        problems({ NEARHUB_GIT_GITHUB_API_URLS: "github.com=https://user:pw@api.example" }),
        /must be upstream=url/,
      );
    });

    test("an app for an unknown upstream, an app beside a token, or an API without an app stop the start", () => {
      const check = (env: Record<string, string>, expected: RegExp) =>
        assert.throws(
          () => resolveGitHubApps(parse(env)),
          (e: unknown) => e instanceof ConfigError && expected.test(e.message),
        );
      check(
        { NEARHUB_GIT_GITHUB_APPS: `nowhere.example=1:2:${keyPath}` },
        /NEARHUB_GIT_GITHUB_APPS names upstream nowhere.example, which NEARHUB_GIT_UPSTREAMS does not define \(it has github.com, gitlab.com\)/,
      );
      check(
        { NEARHUB_GIT_GITHUB_APPS: `github.com=1:2:${keyPath}`, NEARHUB_GIT_TOKENS: "github.com=ghp_secret" },
        /both give credentials for github.com/,
      );
      check({ NEARHUB_GIT_GITHUB_API_URLS: "gitlab.com=https://api.example" }, /names gitlab.com, which has no app/);
      try {
        resolveGitHubApps(
          parse({ NEARHUB_GIT_GITHUB_APPS: `github.com=1:2:${keyPath}`, NEARHUB_GIT_TOKENS: "github.com=ghp_secret" }),
        );
      } catch (error) {
        assert.doesNotMatch((error as Error).message, /ghp_secret/, "the token is not in the start-up error");
      }
    });
  });
});
