import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { EchoService } from "@nearhub/proto/echo";
import { SignJWT, exportJWK, generateKeyPair, type JWK } from "jose";
import { AuditEventSchema, Decision } from "@nearhub/proto/audit";
import { fromJsonString } from "@bufbuild/protobuf";
import { Bus } from "../bus.js";
import { commonEnv, parseEnv } from "../config.js";
import { Code, NearhubError } from "../errors.js";
import { silentLogger } from "../logger.js";
import { Names } from "../names.js";
import { createClient } from "../rpc-client.js";
import type { ServiceImpl } from "../rpc-types.js";
import { ServiceHost } from "../service-host.js";
import { auditStream } from "../streams.js";
import { Access } from "./access.js";
import { IDENTITY_HEADER } from "./identity.js";
import { generateToken } from "./tokens.js";

const NATS_URL = process.env["NATS_URL"] || "nats://127.0.0.1:4222";
const KEY = randomBytes(32).toString("base64");
const ISSUER = "https://login.test/realms/acme";

// The handler checks `write` on the resource named by the request text and echoes who called.
const echo: ServiceImpl<typeof EchoService> = {
  echo: async (request, ctx) => {
    await ctx.authorize("write", request.text);
    return { text: request.text, principal: ctx.principal.subject };
  },
  echoServerStream: async function* () {},
  echoClientStream: async () => ({ texts: [] }),
  echoBidiStream: async function* () {},
};

async function rejects(promise: Promise<unknown>, code: Code, message: RegExp): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof NearhubError, String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, message);
    return true;
  });
}

describe("access control over gRPC: tokens, OIDC, service identities, revocation", () => {
  const namespace = `t${randomBytes(5).toString("hex")}`;
  const admin = generateToken().token;
  let host: ServiceHost;
  let owner: Access;
  let ownerBus: Bus;
  let jwks: Server;
  let privateKey: Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];
  let address: string;

  before(async () => {
    const keys = await generateKeyPair("RS256");
    privateKey = keys.privateKey;
    const jwk: JWK = { ...(await exportJWK(keys.publicKey)), kid: "k1", alg: "RS256", use: "sig" };
    jwks = createServer((_, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => jwks.listen(0, "127.0.0.1", resolve));
    const env = {
      NATS_URL,
      NEARHUB_NAMESPACE: namespace,
      LOG_LEVEL: "silent",
      NEARHUB_SHUTDOWN_TIMEOUT_MS: "1000",
      NEARHUB_INTERNAL_KEY: KEY,
      NEARHUB_ADMIN_TOKEN: admin,
      NEARHUB_ANONYMOUS_READ: "github.com/public/*",
      NEARHUB_OIDC_ISSUER: ISSUER,
      NEARHUB_OIDC_AUDIENCE: "nearhub",
      NEARHUB_OIDC_JWKS_URL: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/certs`,
    };
    const config = parseEnv("test", commonEnv, env);
    host = await ServiceHost.start(
      {
        name: "echo",
        common: config,
        grpcPort: 0,
        logger: silentLogger,
        opsServer: false,
        provisioning: (names) => ({ streams: [auditStream(names, 400, false)] }),
      },
      async (h) => h.serve(EchoService, echo),
    );
    address = `127.0.0.1:${host.grpcPort}`;
    // The policy owner, as the audit service would be: another process with its own connection.
    ownerBus = await Bus.connect({
      url: NATS_URL,
      name: "owner",
      source: "test",
      names: new Names(namespace),
      logger: silentLogger,
    });
    owner = await Access.start({ service: "audit", bus: ownerBus, config, logger: silentLogger });
  });

  after(async () => {
    await owner?.stop();
    await host?.stop();
    if (ownerBus) {
      for await (const info of ownerBus.jsm.streams.list())
        if (
          info.config.name.startsWith(`${namespace.toUpperCase()}_`) ||
          info.config.name.startsWith(`KV_${namespace}_`)
        )
          await ownerBus.jsm.streams.delete(info.config.name);
      await ownerBus.drain(1000);
    }
    jwks?.close();
  });

  const call = (resource: string, metadata: Record<string, string> = {}) => {
    const client = createClient(EchoService, address, { metadata });
    return client.echo({ text: resource }).finally(() => client.$close());
  };
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

  test("no credentials: anonymous, refused writes with UNAUTHENTICATED saying how to sign in, audited", async () => {
    await rejects(call("github.com/public/x"), Code.Unauthenticated, /needs a signed-in caller: send an API token/);
    const names = new Names(namespace);
    const msg = await ownerBus.jsm.streams.getMessage(names.stream("AUDIT"), {
      last_by_subj: names.auditSubject("echo", "access.write"),
    });
    const event = fromJsonString(AuditEventSchema, new TextDecoder().decode(msg!.data));
    assert.equal(event.decision, Decision.DENY);
    assert.equal(event.actor, "anonymous");
    assert.equal(event.resource, "github.com/public/x");
  });

  test("the bootstrap admin token may do anything", async () => {
    const answer = await call("github.com/anything/x", bearer(admin));
    assert.match(answer.principal, /^token:[0-9a-f]{16}$/);
  });

  test("a scoped developer token: allowed in scope, PERMISSION_DENIED outside, refused within 5 s of revocation", async () => {
    const adminPrincipal = await owner.authenticate(bearer(admin));
    const { record, token } = await owner.store.createToken(
      { name: "ci", role: "developer", scopes: ["github.com/acme/*"], ttlSeconds: 3600 },
      adminPrincipal,
    );
    // The echo service learns of the token through its KV watch.
    await eventually(() =>
      call("github.com/acme/rocket", bearer(token)).then(
        () => true,
        () => undefined,
      ),
    );
    await rejects(
      call("github.com/other/x", bearer(token)),
      Code.PermissionDenied,
      new RegExp(
        `'write' on 'github.com/other/x' is not granted to token:${record.id} \\(role developer on github.com/acme/\\*\\)`,
      ),
    );
    const revokedAt = Date.now();
    await owner.store.revokeToken(record.id);
    await eventually(() =>
      call("github.com/acme/rocket", bearer(token)).then(
        () => undefined,
        (e: NearhubError) => (e.code === Code.Unauthenticated && /revoked/.test(e.message) ? true : undefined),
      ),
    );
    assert.ok(Date.now() - revokedAt < 5000, `revocation took ${Date.now() - revokedAt} ms`);
  });

  test("a token verified once is still checked against its current record on every call", async () => {
    const adminPrincipal = await owner.authenticate(bearer(admin));
    const { record, token } = await owner.store.createToken(
      { name: "cached", role: "viewer", scopes: ["*"], ttlSeconds: 3600 },
      adminPrincipal,
    );
    const who = `token:${record.id}`;
    // Verified in full, then known by its string: both answers are the same principal.
    assert.equal((await owner.authenticate(bearer(token))).subject, who);
    assert.equal((await owner.authenticate(bearer(token))).subject, who);
    // The same id with another secret, a longer or cut secret, another case: not the known token.
    const secret = token.slice(`nhp_${record.id}_`.length);
    const otherSecret = secret.startsWith("A") ? `B${secret.slice(1)}` : `A${secret.slice(1)}`;
    for (const [value, message] of [
      [`nhp_${record.id}_${otherSecret}`, /the API token is not valid/],
      [`${token}x`, /neither a nearhub API token/],
      [token.slice(0, -1), /neither a nearhub API token/],
      [token.toUpperCase(), /neither a nearhub API token/],
      [` ${token}x `, /neither a nearhub API token/],
    ] as const)
      await rejects(owner.authenticate(bearer(value)), Code.Unauthenticated, message);
    assert.equal((await owner.authenticate(bearer(token))).subject, who);
    // A changed record (here an expiry moved into the past) is checked again, not served from the cache.
    const current = owner.policy.tokens.get(record.id);
    assert.ok(current);
    owner.policy.tokens.set(record.id, { ...current, expiresAt: Date.now() - 1000 });
    await rejects(owner.authenticate(bearer(token)), Code.Unauthenticated, /expired on/);
    owner.policy.tokens.set(record.id, current);
    assert.equal((await owner.authenticate(bearer(token))).subject, who);
    // A record re-issued under the same id with another hash refuses the old secret.
    owner.policy.tokens.set(record.id, { ...current, hash: "0".repeat(64) });
    await rejects(owner.authenticate(bearer(token)), Code.Unauthenticated, /the API token is not valid/);
    owner.policy.tokens.set(record.id, current);
    // A token the policy no longer has is refused at once.
    owner.policy.tokens.delete(record.id);
    await rejects(owner.authenticate(bearer(token)), Code.Unauthenticated, /the API token is not valid/);
    owner.policy.tokens.set(record.id, current);
    // Revocation: refused here at once, and by the serving host (which cached it on a call) over gRPC.
    // A viewer may not write: PERMISSION_DENIED once the host knows the token (it authenticated it).
    await eventually(() =>
      call("github.com/acme/rocket", bearer(token)).then(
        () => undefined,
        (e: NearhubError) => (e.code === Code.PermissionDenied ? true : undefined),
      ),
    );
    await rejects(call("github.com/acme/rocket", bearer(token)), Code.PermissionDenied, new RegExp(who));
    await owner.store.revokeToken(record.id);
    await rejects(owner.authenticate(bearer(token)), Code.Unauthenticated, /was revoked on/);
    await eventually(() =>
      call("github.com/acme/rocket", bearer(token)).then(
        () => undefined,
        (e: NearhubError) => (e.code === Code.Unauthenticated && /revoked/.test(e.message) ? true : undefined),
      ),
    );
  });

  test("a token cannot be created beyond its creator's own grants", async () => {
    const adminPrincipal = await owner.authenticate(bearer(admin));
    const { token } = await owner.store.createToken(
      { name: "dev", role: "developer", scopes: ["github.com/acme/*"], ttlSeconds: 0 },
      adminPrincipal,
    );
    await eventually(async () => (owner.policy.tokens.size >= 2 ? true : undefined));
    const dev = await owner.authenticate(bearer(token));
    await rejects(
      owner.store.createToken({ name: "x", role: "admin", scopes: ["github.com/acme/*"], ttlSeconds: 0 }, dev),
      Code.PermissionDenied,
      /cannot create a admin token on 'github.com\/acme\/\*': it lacks/,
    );
    await rejects(
      owner.store.createToken({ name: "x", role: "viewer", scopes: ["*"], ttlSeconds: 0 }, dev),
      Code.PermissionDenied,
      /on '\*'/,
    );
    const narrower = await owner.store.createToken(
      { name: "x", role: "viewer", scopes: ["github.com/acme/rocket"], ttlSeconds: 60 },
      dev,
    );
    assert.equal(narrower.record.createdBy, dev.subject);
    await rejects(
      owner.store.createToken({ name: "x", role: "boss", scopes: [], ttlSeconds: 0 }, dev),
      Code.InvalidArgument,
      /'boss' is not a role/,
    );
    await rejects(
      owner.store.createToken({ name: "x", role: "viewer", scopes: ["../etc"], ttlSeconds: 0 }, dev),
      Code.InvalidArgument,
      /not a resource pattern/,
    );
    await rejects(
      owner.store.putBinding({ subject: "anonymous", role: "developer", pattern: "*" }, adminPrincipal),
      Code.InvalidArgument,
      /writes are never anonymous/,
    );
  });

  test("OIDC: a JWT from the issuer maps to user and groups; expired, foreign, alg none and HS256 are refused", async () => {
    const jwt = (claims: Record<string, unknown>, opts: { issuer?: string; exp?: string | number } = {}) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: "RS256", kid: "k1" })
        .setIssuer(opts.issuer ?? ISSUER)
        .setAudience("nearhub")
        .setSubject("alice")
        .setIssuedAt()
        .setExpirationTime(opts.exp ?? "5m")
        .sign(privateKey);
    const adminPrincipal = await owner.authenticate(bearer(admin));
    await owner.store.putBinding({ subject: "group:ml", role: "developer", pattern: "models/acme/*" }, adminPrincipal);
    await eventually(async () => (host.access.policy.bindings.size > 0 ? true : undefined));
    const answer = await call("models/acme/bert", bearer(await jwt({ groups: ["ml"] })));
    assert.equal(answer.principal, "user:alice");
    await rejects(
      call("models/acme/bert", bearer(await jwt({ groups: ["ops"] }))),
      Code.PermissionDenied,
      /user:alice/,
    );
    await rejects(
      call("models/acme/bert", bearer(await jwt({ groups: ["ml"] }, { exp: Math.floor(Date.now() / 1000) - 3600 }))),
      Code.Unauthenticated,
      /has expired/,
    );
    await rejects(
      call("models/acme/bert", bearer(await jwt({ groups: ["ml"] }, { issuer: "https://evil.test" }))),
      Code.Unauthenticated,
      /claim 'iss'/,
    );
    const unsigned = `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${Buffer.from(
      JSON.stringify({
        sub: "alice",
        iss: ISSUER,
        aud: "nearhub",
        groups: ["ml"],
        exp: Math.floor(Date.now() / 1000) + 60,
      }),
    ).toString("base64url")}.`;
    await rejects(call("models/acme/bert", bearer(unsigned)), Code.Unauthenticated, /JWT was refused/);
    const hs = await new SignJWT({ groups: ["ml"] })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer(ISSUER)
      .setAudience("nearhub")
      .setSubject("alice")
      .setExpirationTime("5m")
      .sign(new TextEncoder().encode("a-shared-secret-anyone-could-guess"));
    await rejects(call("models/acme/bert", bearer(hs)), Code.Unauthenticated, /algorithm is not allowed/);
  });

  test("hostile credentials get UNAUTHENTICATED with what to fix", async () => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ authorization: "Bearer nope" }, /neither a nearhub API token/],
      [{ authorization: `Bearer ${generateToken().token}` }, /the API token is not valid/],
      [{ authorization: "Bearer" }, /has no credentials/],
      [{ authorization: "Digest abc" }, /scheme 'digest' is not supported/],
      [{ authorization: `Basic ${Buffer.from("git:").toString("base64")}` }, /needs an API token as the password/],
      [{ authorization: "Bearer a.b.c" }, /JWT was refused/],
      [{ [IDENTITY_HEADER]: "nhi1.e30.AAAA" }, /bad signature/],
      [{ [IDENTITY_HEADER]: "forged" }, /malformed/],
    ];
    for (const [metadata, message] of cases)
      await rejects(call("github.com/acme/x", metadata), Code.Unauthenticated, message);
    // A huggingface.co token that huggingface_hub sends by itself is not ours: the caller is anonymous.
    await rejects(
      call("github.com/acme/x", { authorization: `Bearer hf_${"a".repeat(34)}` }),
      Code.Unauthenticated,
      /needs a signed-in caller/,
    );
    // Basic with the token as password works (what git sends).
    const basic = `Basic ${Buffer.from(`git:${admin}`).toString("base64")}`;
    assert.match((await call("github.com/acme/x", { authorization: basic })).principal, /^token:/);
  });

  test("a service vouches for the user it acts for; the callee re-checks that user's permissions", async () => {
    const adminPrincipal = await owner.authenticate(bearer(admin));
    const { token } = await owner.store.createToken(
      { name: "viewer", role: "viewer", scopes: ["*"], ttlSeconds: 0 },
      adminPrincipal,
    );
    await eventually(async () => (host.access.policy.tokens.size >= 4 ? true : undefined));
    const user = await owner.authenticate(bearer(token));
    const vouched = { [IDENTITY_HEADER]: owner.identity.assert(user) };
    await rejects(call("github.com/acme/x", vouched), Code.PermissionDenied, /is not granted to token:/);
    const self = { [IDENTITY_HEADER]: owner.identity.assert() };
    assert.equal((await call("github.com/acme/x", self)).principal, "service:audit");
  });
});

async function eventually<T>(check: () => Promise<T | undefined>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}
