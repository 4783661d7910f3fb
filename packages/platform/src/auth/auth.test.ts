import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Code, NearhubError } from "../errors.js";
import type { Principal } from "../rpc-types.js";
import { IdentitySigner } from "./identity.js";
import {
  PERMISSIONS,
  ROLES,
  ROLE_PERMISSIONS,
  matchesPattern,
  patternProblem,
  type Permission,
  type Role,
} from "./permissions.js";
import { Policy, type TokenRecord } from "./policy.js";
import { bindingId, bootstrapRecord } from "./policy-store.js";
import { generateToken, hashSecret, parseToken, secretMatches } from "./tokens.js";

describe("resource patterns", () => {
  const cases: Array<[string, string, boolean]> = [
    ["*", "github.com/acme/rocket", true],
    ["*", "audit", true],
    ["github.com/acme/*", "github.com/acme/rocket", true],
    ["github.com/acme/*", "github.com/acme/rocket/deeper", true],
    ["github.com/acme/*", "github.com/other/x", false],
    ["github.com/acme/*", "github.com/acme-evil/x", false],
    ["github.com/acme/*", "github.com/acme", false],
    ["github.com/*/rocket", "github.com/acme/rocket", true],
    ["github.com/*/rocket", "github.com/acme/x/rocket", false],
    ["models/acme/bert-*", "models/acme/bert-base", true],
    ["models/acme/bert-*", "models/acme/gpt", false],
    ["models/gpt2", "models/gpt2", true],
    ["models/gpt2", "models/gpt2x", false],
    ["github.com/a.b/*", "github.com/aXb/c", false],
  ];
  for (const [pattern, resource, expected] of cases) {
    test(`${pattern} ${expected ? "selects" : "does not select"} ${resource}`, () => {
      assert.equal(matchesPattern(pattern, resource), expected);
    });
  }

  test("bad patterns are named with what to write instead", () => {
    assert.match(patternProblem("") ?? "", /empty/);
    assert.match(patternProblem("github.com/../x") ?? "", /'\.\.' segments/);
    assert.match(patternProblem("a b") ?? "", /not a resource pattern/);
    assert.match(patternProblem("x/".repeat(200)) ?? "", /longer than 256/);
    assert.match(patternProblem("a//b") ?? "", /not a resource pattern/);
    assert.equal(patternProblem("github.com/acme/*"), undefined);
  });
});

describe("tokens", () => {
  test("a generated token parses back, and only its secret matches the stored hash", () => {
    const { id, token, hash } = generateToken();
    const parsed = parseToken(token);
    assert.ok(parsed);
    assert.equal(parsed.id, id);
    assert.ok(secretMatches(parsed.secret, hash));
    const flipped = `${parsed.secret.slice(0, -1)}${parsed.secret.endsWith("A") ? "B" : "A"}`;
    assert.equal(secretMatches(flipped, hash), false);
    assert.equal(hash, hashSecret(parsed.secret));
    assert.notEqual(generateToken().token, token);
  });

  test("malformed tokens are not tokens", () => {
    for (const bad of [
      "",
      "nhp_",
      "nhp_zz_abc",
      `nhp_${"a".repeat(16)}_${"b".repeat(42)}`,
      `xx_${"a".repeat(16)}_${"b".repeat(43)}`,
    ])
      assert.equal(parseToken(bad), undefined, bad);
  });
});

const token = (over: Partial<TokenRecord>): TokenRecord => ({
  id: "0123456789abcdef",
  name: "t",
  role: "developer",
  scopes: ["*"],
  hash: "00",
  createdAt: 0,
  createdBy: "system",
  creatorGroups: [],
  ...over,
});

describe("policy: each role against each permission", () => {
  for (const role of ROLES) {
    for (const permission of PERMISSIONS) {
      const granted = ROLE_PERMISSIONS[role].has(permission);
      test(`${role} ${granted ? "may" : "may not"} ${permission} on github.com/acme/rocket`, () => {
        const policy = new Policy();
        const user: Principal = { subject: "user:alice", groups: [], method: "oidc" };
        policy.bindings.set("b", {
          id: "b",
          subject: "user:alice",
          role,
          pattern: "github.com/acme/*",
          createdBy: "system",
          createdAt: 0,
        });
        const decision = policy.decide(user, permission, "github.com/acme/rocket");
        assert.equal(decision.allowed, granted);
        if (!granted)
          assert.match(decision.reason, new RegExp(`'${permission.replace(".", "\\.")}' on 'github.com/acme/rocket'`));
        // Outside the pattern nothing is granted.
        assert.equal(policy.decide(user, permission, "github.com/other/x").allowed, false);
      });
    }
  }

  test("the role ladder is strictly increasing", () => {
    for (let i = 1; i < ROLES.length; i++) {
      const role = ROLES[i] as Role;
      const lower = ROLE_PERMISSIONS[ROLES[i - 1] as Role];
      const higher = ROLE_PERMISSIONS[role];
      for (const p of lower) assert.ok(higher.has(p), `${role} lacks ${p}`);
      assert.ok(higher.size > lower.size);
    }
  });
});

describe("policy: subjects", () => {
  const read = (policy: Policy, p: Principal, r: string, perm: Permission = "read") =>
    policy.decide(p, perm, r).allowed;

  test("group bindings apply to members, with or without the group: prefix", () => {
    const policy = new Policy();
    policy.bindings.set("g", {
      id: "g",
      subject: "group:ml",
      role: "viewer",
      pattern: "models/acme/*",
      createdBy: "x",
      createdAt: 0,
    });
    assert.ok(read(policy, { subject: "user:bob", groups: ["group:ml"], method: "oidc" }, "models/acme/bert"));
    assert.ok(read(policy, { subject: "user:bob", groups: ["ml"], method: "oidc" }, "models/acme/bert"));
    assert.equal(read(policy, { subject: "user:bob", groups: ["ops"], method: "oidc" }, "models/acme/bert"), false);
  });

  test("anonymous reads only what is public, and never writes", () => {
    const policy = new Policy(["github.com/public/*"]);
    const anon: Principal = { subject: "anonymous", groups: [], method: "anonymous" };
    assert.ok(read(policy, anon, "github.com/public/x"));
    assert.equal(read(policy, anon, "github.com/private/x"), false);
    assert.equal(read(policy, anon, "github.com/public/x", "write"), false);
    assert.match(policy.decide(anon, "read", "github.com/private/x").reason, /signed-in caller/);
    policy.bindings.set("a", {
      id: "a",
      subject: "anonymous",
      role: "viewer",
      pattern: "models/*",
      createdBy: "x",
      createdAt: 0,
    });
    assert.ok(read(policy, anon, "models/acme/bert"));
    // Signed-in callers can read what anonymous can.
    assert.ok(read(policy, { subject: "user:z", groups: [], method: "oidc" }, "github.com/public/x"));
  });

  test("services are trusted only when they authenticated as a service", () => {
    const policy = new Policy();
    assert.ok(read(policy, { subject: "service:sync", groups: [], method: "service" }, "audit", "audit.read"));
    assert.equal(read(policy, { subject: "service:sync", groups: [], method: "token" }, "audit", "audit.read"), false);
  });

  test("a token is limited by its role, its scopes, its expiry, revocation, and its creator", () => {
    const policy = new Policy();
    const t: Principal = { subject: "token:0123456789abcdef", groups: [], method: "token" };
    policy.tokens.set("0123456789abcdef", token({ scopes: ["github.com/acme/*"] }));
    assert.ok(read(policy, t, "github.com/acme/rocket", "write"));
    assert.equal(read(policy, t, "github.com/other/x"), false);
    assert.equal(read(policy, t, "github.com/acme/rocket", "delete"), false);
    assert.match(policy.decide(t, "read", "github.com/other/x").reason, /role developer on github\.com\/acme\/\*/);

    policy.tokens.set("0123456789abcdef", token({ expiresAt: Date.now() - 1 }));
    assert.equal(read(policy, t, "github.com/acme/rocket"), false);
    policy.tokens.set("0123456789abcdef", token({ revokedAt: Date.now() }));
    assert.equal(read(policy, t, "github.com/acme/rocket"), false);

    // Created by alice, who is a viewer on acme: the developer token cannot write.
    policy.tokens.set("0123456789abcdef", token({ createdBy: "user:alice" }));
    policy.bindings.set("v", {
      id: "v",
      subject: "user:alice",
      role: "viewer",
      pattern: "github.com/acme/*",
      createdBy: "x",
      createdAt: 0,
    });
    assert.ok(read(policy, t, "github.com/acme/rocket"));
    assert.equal(read(policy, t, "github.com/acme/rocket", "write"), false);
    policy.bindings.delete("v");
    assert.equal(read(policy, t, "github.com/acme/rocket"), false, "the creator lost access, so did the token");
  });

  test("the bootstrap token is an admin on everything", () => {
    const { token: secret } = generateToken();
    const record = bootstrapRecord(secret);
    assert.equal(record.role, "admin");
    assert.deepEqual(record.scopes, ["*"]);
    assert.throws(() => bootstrapRecord("nope"), /NEARHUB_ADMIN_TOKEN must look like/);
  });

  test("binding ids are deterministic", () => {
    assert.equal(bindingId("user:a", "viewer", "*"), bindingId("user:a", "viewer", "*"));
    assert.notEqual(bindingId("user:a", "viewer", "*"), bindingId("user:a", "admin", "*"));
  });
});

describe("identity assertions between services", () => {
  const key = Buffer.alloc(32, 1);
  const edge = new IdentitySigner(key, "edge");
  const sync = new IdentitySigner(key, "sync");

  test("an assertion made by one service is verified by another, carrying who and via whom", () => {
    const value = edge.assert({ subject: "user:alice", groups: ["group:ml"], method: "oidc" });
    const principal = sync.verify(value);
    assert.deepEqual(principal, { subject: "user:alice", groups: ["group:ml"], method: "oidc", via: "edge" });
    assert.equal(sync.verify(edge.assert()).subject, "service:edge");
  });

  test("forged, tampered, malformed and oversized assertions are refused", () => {
    const other = new IdentitySigner(Buffer.alloc(32, 2), "evil");
    const refused = (value: string, why: RegExp) =>
      assert.throws(
        () => sync.verify(value),
        (e: unknown) => e instanceof NearhubError && e.code === Code.Unauthenticated && why.test(e.message),
      );
    refused(other.assert({ subject: "service:x", groups: [], method: "service" }), /bad signature/);
    const good = edge.assert({ subject: "user:alice", groups: [], method: "oidc" });
    const [v = "", body = "", mac = ""] = good.split(".");
    const forgedBody = Buffer.from(
      JSON.stringify({ s: "service:edge", g: [], m: "service", i: "edge", e: Date.now() + 60_000 }),
    ).toString("base64url");
    refused(`${v}.${forgedBody}.${mac}`, /bad signature/);
    refused(`${v}.${body}`, /malformed/);
    refused("garbage", /malformed/);
    refused("x".repeat(9000), /too long/);
    assert.throws(() => new IdentitySigner(Buffer.alloc(8), "short"), /at least 32 bytes/);
  });
});

describe("policy: content-addressed blobs", () => {
  test("a blob may be read or written by whoever may read or write something", () => {
    const policy = new Policy();
    const scoped: Principal = { subject: "token:0123456789abcdef", groups: [], method: "token" };
    policy.tokens.set("0123456789abcdef", token({ role: "viewer", scopes: ["models/acme/*"] }));
    assert.ok(policy.decide(scoped, "read", "blobs").allowed);
    assert.equal(policy.decide(scoped, "write", "blobs").allowed, false);
    const anon: Principal = { subject: "anonymous", groups: [], method: "anonymous" };
    assert.equal(policy.decide(anon, "read", "blobs").allowed, false);
    assert.ok(new Policy(["models/*"]).decide(anon, "read", "blobs").allowed);
    assert.equal(new Policy(["models/*"]).decide(anon, "write", "blobs").allowed, false);
  });
});
