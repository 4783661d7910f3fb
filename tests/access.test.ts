import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  Code,
  ROLE_PERMISSIONS,
  createClient,
  parseEnv,
  type NearhubError,
  type Permission,
  type Role,
} from "@nearhub/platform";
import { AuditService, Decision } from "@nearhub/proto/audit";
import { RegistryService, RepoKind } from "@nearhub/proto/registry";
import { auditEnv, startAudit } from "@nearhub/audit";
import { indexingEnv, startIndexing } from "@nearhub/indexing";
import { edgeEnv, startEdge, type Edge } from "@nearhub/edge";
import { startStorage, storageEnv } from "@nearhub/storage";
import { serveGitHttpBackend, startSync, syncEnv, type HttpBackend, type SyncHandle } from "@nearhub/sync";
import type { ServiceHost } from "@nearhub/platform";
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

const ROLES: Role[] = ["viewer", "developer", "maintainer", "admin"];

// Access control across the services, as users meet it: over HTTP (the edge's API), git (clone
// through the edge) and gRPC (the CLI's uploads to storage), with tokens made by `nearhub token`.
describe("access control: roles, scopes, revocation, anonymous access, hostile credentials", () => {
  const ns = uniqueNamespace("a");
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let origin: HttpBackend;
  let sync: SyncHandle;
  let storage: ServiceHost;
  let audit: ServiceHost;
  let indexing: ServiceHost;
  let edge: Edge;
  let edgeUrl: string;
  let storageAddr: string;
  const tokens = new Map<Role, string>();

  const cli = (args: string[], token?: string) =>
    // upload and download talk to storage over gRPC (--storage), everything else to the edge.
    exec(
      process.execPath,
      [
        "--conditions=development",
        "--import",
        "tsx",
        "packages/cli/src/bin.ts",
        ...args,
        ...(args[0] === "upload" ? [] : ["--url", edgeUrl]),
      ],
      {
        cwd: root,
        env: {
          ...process.env,
          NEARHUB_DATA_DIR: join(dir.path, "no-such-dir"),
          ...(token ? { NEARHUB_TOKEN: token } : {}),
        },
      },
    );
  const http = (method: string, path: string, token?: string, body?: unknown) =>
    fetch(`${edgeUrl}${path}`, {
      method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  const clone = async (repo: string, token?: string) => {
    const target = join(dir.path, "clones", `${repo.replaceAll("/", "_")}-${Math.random().toString(36).slice(2)}`);
    const url = new URL(`${edgeUrl}/${repo}.git`);
    if (token) {
      url.username = "git";
      url.password = token;
    }
    return exec("git", ["clone", "-q", url.toString(), target]);
  };
  const createToken = async (role: Role, scope: string, ttl = "1h") => {
    const made = await cli(
      ["token", "create", "--role", role, "--scope", scope, "--ttl", ttl, "--json"],
      adminToken(ns),
    );
    assert.equal(made.code, 0, made.stderr);
    return JSON.parse(made.stdout) as { secret: string; token: { id: string } };
  };

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir("nearhub-access-");
    const originRoot = join(dir.path, "origin");
    await mkdir(join(originRoot, "acme"), { recursive: true });
    await mkdir(join(originRoot, "other"), { recursive: true });
    for (const repo of ["acme/rocket", "other/x"]) {
      const bare = join(originRoot, `${repo}.git`);
      await run("git", ["init", "--bare", "-q", "-b", "main", bare], { env: GIT_ENV });
      const wt = join(dir.path, "work", repo);
      await run("git", ["clone", "-q", bare, wt], { env: GIT_ENV });
      await writeFile(join(wt, "README.md"), `# ${repo}\n`);
      await run("git", ["add", "."], { cwd: wt, env: GIT_ENV });
      await run("git", ["commit", "-q", "-m", "first"], { cwd: wt, env: GIT_ENV });
      await run("git", ["push", "-q", "origin", "main"], { cwd: wt, env: GIT_ENV });
    }
    origin = await serveGitHttpBackend({ root: originRoot });
    const env = serviceEnv(natsUrl, ns, join(dir.path, "data"), { NEARHUB_GIT_UPSTREAMS: `github.com=${origin.url}` });
    [sync, storage, audit, indexing] = await Promise.all([
      startSync(parseEnv("sync", syncEnv, env)),
      startStorage(parseEnv("storage", storageEnv, env)),
      startAudit(parseEnv("audit", auditEnv, env)),
      startIndexing(parseEnv("indexing", indexingEnv, env)),
    ]);
    storageAddr = `127.0.0.1:${storage.grpcPort}`;
    edge = await startEdge(
      parseEnv("edge", edgeEnv, {
        ...env,
        NEARHUB_SYNC_ADDR: `127.0.0.1:${sync.grpcPort}`,
        NEARHUB_SYNC_GIT_URL: `http://127.0.0.1:${sync.gitHttpPort}`,
        NEARHUB_STORAGE_ADDR: storageAddr,
        NEARHUB_AUDIT_ADDR: `127.0.0.1:${audit.grpcPort}`,
        NEARHUB_INDEXING_ADDR: `127.0.0.1:${indexing.grpcPort}`,
      }),
    );
    edgeUrl = `http://127.0.0.1:${edge.httpPort}`;
    // The administrator mirrors two repositories and makes a token per role.
    for (const name of ["github.com/acme/rocket", "github.com/other/x"]) {
      const added = await cli(["mirror", "add", name], adminToken(ns));
      assert.equal(added.code, 0, added.stderr);
      const synced = await cli(["mirror", "sync", name, "--wait"], adminToken(ns));
      assert.equal(synced.code, 0, synced.stderr);
    }
    for (const role of ROLES) tokens.set(role, (await createToken(role, "*")).secret);
  });

  after(async () => {
    await edge?.stop();
    await Promise.all([sync?.stop(), storage?.stop(), audit?.stop(), indexing?.stop()]);
    await origin?.close();
    await deleteNamespace(natsUrl, ns);
    await dir?.cleanup();
  });

  // Each operation, tried by each role; allowed exactly when the role grants its permission.
  const operations: Array<{
    permission: Permission;
    how: string;
    attempt: (role: Role, token: string) => Promise<boolean>;
  }> = [
    {
      permission: "read",
      how: "git clone through the edge",
      attempt: async (_, token) => (await clone("github.com/acme/rocket", token)).code === 0,
    },
    {
      permission: "read",
      how: "GET /api/mirrors/{name}",
      attempt: async (_, token) => statusOk(await http("GET", "/api/mirrors/github.com/acme/rocket", token)),
    },
    {
      permission: "write",
      how: "nearhub upload (gRPC to storage)",
      attempt: async (role, token) => {
        const file = join(dir.path, `weights-${role}.bin`);
        await writeFile(file, `weights of ${role}\n`);
        const up = await cli(["upload", `acme/model-${role}`, file, "--storage", storageAddr], token);
        if (up.code !== 0) assert.match(up.stderr, /'write' on '(models\/acme\/model-|blobs)/, up.stderr);
        return up.code === 0;
      },
    },
    {
      permission: "sync",
      how: "POST /api/mirrors/{name}/sync",
      attempt: async (_, token) => statusOk(await http("POST", "/api/mirrors/github.com/acme/rocket/sync", token)),
    },
    {
      permission: "mirror",
      how: "POST /api/mirrors",
      attempt: async (role, token) =>
        statusOk(await http("POST", "/api/mirrors", token, { name: `github.com/acme/new-${role}` })),
    },
    {
      permission: "delete",
      how: "DELETE /api/mirrors/{name}",
      attempt: async (role, token) => {
        const name = `github.com/acme/doomed-${role}`;
        assert.ok(statusOk(await http("POST", "/api/mirrors", adminToken(ns), { name })));
        return statusOk(await http("DELETE", `/api/mirrors/${name}`, token));
      },
    },
    {
      permission: "audit.read",
      how: "GET /api/audit/records",
      attempt: async (_, token) => statusOk(await http("GET", "/api/audit/records?limit=1", token)),
    },
    {
      permission: "roles.manage",
      how: "POST /api/roles",
      attempt: async (role, token) =>
        statusOk(
          await http("POST", "/api/roles", token, {
            subject: `user:u-${role}`,
            role: "viewer",
            pattern: "github.com/acme/*",
          }),
        ),
    },
    {
      permission: "tokens.manage",
      how: "DELETE /api/tokens/{id} of somebody else's token",
      attempt: async (_, token) => {
        const victim = await createToken("viewer", "github.com/acme/*");
        return statusOk(await http("DELETE", `/api/tokens/${victim.token.id}`, token));
      },
    },
  ];

  for (const op of operations) {
    test(`${op.permission} (${op.how}): allowed exactly for the roles that grant it`, async () => {
      for (const role of ROLES) {
        const allowed = await op.attempt(role, tokens.get(role)!);
        assert.equal(
          allowed,
          ROLE_PERMISSIONS[role].has(op.permission),
          `${role} ${allowed ? "could" : "could not"} ${op.how}`,
        );
      }
    });
  }

  test("a denial says which permission is missing on which resource, and is in the audit trail", async () => {
    const res = await http("DELETE", "/api/mirrors/github.com/acme/rocket", tokens.get("developer"));
    assert.equal(res.status, 403);
    const body = (await res.json()) as { error: string };
    assert.match(
      body.error,
      /'delete' on 'github.com\/acme\/rocket' is not granted to token:[0-9a-f]{16} \(role developer on \*\)/,
    );
    const auditClient = createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      await eventually(
        async () => {
          const { records } = await auditClient.queryRecords({
            action: "access.delete",
            decision: Decision.DENY,
            pageSize: 10,
          });
          return records.find((r) => r.event?.resource === "github.com/acme/rocket") ? true : undefined;
        },
        10_000,
        "the denial to be recorded",
      );
    } finally {
      auditClient.$close();
    }
  });

  test("scopes: a github.com/acme/* token clones acme/rocket but not other/x, and cannot reach models", async () => {
    const { secret } = await createToken("developer", "github.com/acme/*");
    assert.equal((await clone("github.com/acme/rocket", secret)).code, 0);
    const refused = await clone("github.com/other/x", secret);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /403/);
    const registry = createClient(RegistryService, storageAddr, { metadata: { authorization: `Bearer ${secret}` } });
    try {
      await assert.rejects(
        registry.getRepo({ repo: { kind: RepoKind.MODEL, id: "acme/model-admin" } }),
        (e: NearhubError) =>
          e.code === Code.PermissionDenied && /'read' on 'models\/acme\/model-admin'/.test(e.message),
      );
    } finally {
      registry.$close();
    }
  });

  test("search returns only what the caller may read", async () => {
    const { secret } = await createToken("viewer", "github.com/acme/*");
    const ids = async (token: string) => {
      const res = await http("GET", "/api/search?kind=repo&limit=100", token);
      assert.equal(res.status, 200);
      return ((await res.json()) as { hits?: Array<{ id: string }> }).hits?.map((h) => h.id) ?? [];
    };
    const everything = await eventually(
      async () => {
        const all = await ids(adminToken(ns));
        return all.includes("github.com/other/x") && all.includes("github.com/acme/rocket") ? all : undefined;
      },
      15_000,
      "both mirrors to be indexed",
    );
    const scoped = await ids(secret);
    assert.ok(scoped.includes("github.com/acme/rocket"));
    assert.ok(!scoped.includes("github.com/other/x"), `a github.com/acme/* token found ${scoped.join(", ")}`);
    assert.ok(scoped.every((id) => id.startsWith("github.com/acme/")));
    assert.ok(everything.length > scoped.length);
    assert.equal(
      (await http("GET", "/api/search?kind=repo")).status,
      200,
      "anonymous search answers, with nothing readable",
    );
  });

  test("a revoked token is refused within 5 s, over HTTP, git and gRPC", async () => {
    const { secret, token } = await createToken("developer", "*");
    assert.equal((await clone("github.com/acme/rocket", secret)).code, 0);
    const revoked = await cli(["token", "revoke", token.id], adminToken(ns));
    assert.equal(revoked.code, 0, revoked.stderr);
    const at = Date.now();
    await eventually(
      async () =>
        (await http("GET", "/api/mirrors/github.com/acme/rocket", secret)).status === 401 ? true : undefined,
      5000,
      "the edge to refuse the revoked token",
    );
    const registry = createClient(RegistryService, storageAddr, { metadata: { authorization: `Bearer ${secret}` } });
    try {
      await eventually(
        () =>
          registry.listRepos({}).then(
            () => undefined,
            (e: NearhubError) => (e.code === Code.Unauthenticated ? true : undefined),
          ),
        5000,
        "storage to refuse the revoked token",
      );
    } finally {
      registry.$close();
    }
    assert.ok(Date.now() - at < 5000, `took ${Date.now() - at} ms`);
    const res = await http("GET", "/api/mirrors/github.com/acme/rocket", secret);
    assert.match(((await res.json()) as { error: string }).error, /was revoked on/);
    assert.notEqual((await clone("github.com/acme/rocket", secret)).code, 0);
  });

  test("anonymous: git is challenged for credentials; reads open only where bound; writes never", async () => {
    const challenged = await fetch(`${edgeUrl}/github.com/acme/rocket.git/info/refs?service=git-upload-pack`);
    assert.equal(challenged.status, 401);
    assert.match(challenged.headers.get("www-authenticate") ?? "", /^Basic realm="nearhub"/);
    assert.match(((await challenged.json()) as { error: string }).error, /needs a signed-in caller/);
    const apiChallenge = await http("GET", "/api/mirrors/github.com/acme/rocket");
    assert.equal(apiChallenge.status, 401);
    assert.match(apiChallenge.headers.get("www-authenticate") ?? "", /^Bearer/);

    // Public read of acme/*, switched on by a role binding (takes effect through the KV watch).
    const bound = await cli(["role", "bind", "anonymous", "viewer", "github.com/acme/*"], adminToken(ns));
    assert.equal(bound.code, 0, bound.stderr);
    await eventually(
      async () => ((await clone("github.com/acme/rocket")).code === 0 ? true : undefined),
      5000,
      "anonymous clone",
    );
    assert.notEqual((await clone("github.com/other/x")).code, 0);
    assert.equal((await http("POST", "/api/mirrors/github.com/acme/rocket/sync")).status, 401);
    const refused = await cli(["role", "bind", "anonymous", "developer", "github.com/acme/*"], adminToken(ns));
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /writes are never anonymous/);
  });

  test("hostile credentials get 401 with what to fix, and each refusal is audited", async () => {
    const unsigned = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${Buffer.from('{"sub":"root"}').toString("base64url")}.`;
    const cases: Array<[string, RegExp]> = [
      ["Bearer nhp_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", /the API token is not valid/],
      ["Bearer garbage", /neither a nearhub API token/],
      [`Bearer ${unsigned}`, /JWTs are not accepted here: no OIDC issuer/],
      ["Negotiate abc", /scheme 'negotiate' is not supported/],
      [`Basic ${Buffer.from("git:").toString("base64")}`, /needs an API token as the password/],
      [`Bearer ${"x".repeat(9000)}`, /longer than|neither/],
    ];
    for (const [authorization, message] of cases) {
      const res = await fetch(`${edgeUrl}/api/mirrors`, { headers: { authorization } });
      assert.equal(res.status, 401, authorization.slice(0, 40));
      assert.match(((await res.json()) as { error: string }).error, message);
    }
    // Beyond the header size limit the server refuses before reading the request.
    const huge = await fetch(`${edgeUrl}/api/mirrors`, { headers: { authorization: `Bearer ${"x".repeat(20_000)}` } });
    assert.equal(huge.status, 431);
    const auditClient = createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      await eventually(
        async () => {
          const { records } = await auditClient.queryRecords({
            action: "access.authenticate",
            decision: Decision.DENY,
            pageSize: 100,
          });
          return records.length >= cases.length ? records : undefined;
        },
        10_000,
        "the refusals to be recorded",
      );
    } finally {
      auditClient.$close();
    }
  });

  test("reads are audited: a clone is recorded as git.fetch by the token that made it", async () => {
    // other/x is not anonymous-readable, so git sends the token after the 401 challenge.
    const { secret, token } = await createToken("viewer", "github.com/other/*");
    assert.equal((await clone("github.com/other/x", secret)).code, 0);
    const auditClient = createClient(AuditService, `127.0.0.1:${audit.grpcPort}`, { metadata: adminAuth(ns) });
    try {
      const record = await eventually(
        async () => {
          const { records } = await auditClient.queryRecords({
            action: "git.fetch",
            actor: `token:${token.id}`,
            pageSize: 10,
          });
          return records[0];
        },
        20_000,
        "the clone to be recorded",
      );
      assert.equal(record.event?.resource, "github.com/other/x");
      assert.equal(record.event?.decision, Decision.ALLOW);
      assert.match(record.event?.userAgent ?? "", /^git\//);
    } finally {
      auditClient.$close();
    }
  });

  test("nearhub whoami names the caller and its permissions on a resource", async () => {
    const who = await cli(["whoami", "--resource", "github.com/acme/rocket", "--json"], tokens.get("developer"));
    assert.equal(who.code, 0, who.stderr);
    const answer = JSON.parse(who.stdout) as { subject: string; method: string; permissions: string[] };
    assert.match(answer.subject, /^token:[0-9a-f]{16}$/);
    assert.equal(answer.method, "token");
    assert.deepEqual([...answer.permissions].sort(), [...ROLE_PERMISSIONS.developer].sort());
  });
});

function statusOk(res: Response): boolean {
  void res.body?.cancel();
  if (res.status === 401 || res.status === 403) return false;
  assert.ok(res.status < 300, `unexpected ${res.status}`);
  return true;
}
