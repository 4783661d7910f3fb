import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { ConfigError, generateToken, parseEnv } from "@nearhub/platform";
import type { CommonConfig } from "@nearhub/platform";
import { auditEnv } from "@nearhub/audit";
import { edgeEnv } from "@nearhub/edge";
import { indexingEnv } from "@nearhub/indexing";
import { inferenceEnv } from "@nearhub/inference-gateway";
import { STREAMING_MALLOC_TUNABLES, storageEnv } from "@nearhub/storage";
import { syncEnv } from "@nearhub/sync";
import {
  MissingVariableError,
  composeText,
  composeVariables,
  loadCompose,
  requiredValues,
  requiredVariables,
} from "./compose-file.js";

/** Read by the C library, libuv or node at start-up, not by a service's configuration. */
const RUNTIME_ENV = new Set(["GLIBC_TUNABLES", "UV_THREADPOOL_SIZE", "NODE_OPTIONS"]);

// Docker cannot run here, so the compose stack is checked statically: every nearhub service's
// environment must pass that service's own configuration schema, and every piece the
// operators rely on (health checks, NATS fsync, scrape targets) must be wired.
const root = fileURLToPath(new URL("..", import.meta.url));
const read = (path: string) => readFileSync(`${root}${path}`, "utf8");

// The two secrets compose refuses to start without get fresh values, made the way .env.example
// says; every other variable is unset, so each `${VAR:-default}` takes its default.
const required = requiredValues();
const compose = loadCompose(required);
const schemas = {
  edge: edgeEnv,
  sync: syncEnv,
  storage: storageEnv,
  indexing: indexingEnv,
  audit: auditEnv,
  "inference-gateway": inferenceEnv,
} as const;

describe("docker-compose.yml", () => {
  for (const [name, schema] of Object.entries(schemas)) {
    test(`${name}: its environment passes its configuration schema`, () => {
      const service = compose.services[name];
      assert.ok(service, `no ${name} service in docker-compose.yml`);
      const env = Object.fromEntries(
        Object.entries(service.environment ?? {}).map(([k, v]) => [k, v === null ? undefined : String(v)]),
      );
      // Throws a ConfigError listing every problem when the compose file drifts from the code.
      const config = parseEnv(name, schema, env) as unknown as CommonConfig;
      assert.equal(config.NATS_URL, "nats://nats:4222");
      assert.equal(config.NEARHUB_BIND_HOST, "0.0.0.0");
      // Access control: the shared secrets as .env gives them, the rest at their defaults.
      assert.equal(config.NEARHUB_INTERNAL_KEY, required["NEARHUB_INTERNAL_KEY"]);
      assert.equal(config.NEARHUB_ADMIN_TOKEN, required["NEARHUB_ADMIN_TOKEN"]);
      assert.equal(config.NEARHUB_AUDIT_READS, "on");
      assert.deepEqual(config.NEARHUB_ANONYMOUS_READ, []);
      assert.equal(config.NEARHUB_OIDC_ISSUER, undefined);
      assert.equal(config.NEARHUB_OIDC_USER_CLAIM, "sub");
      assert.equal(config.NEARHUB_OIDC_GROUPS_CLAIM, "groups");
      for (const key of Object.keys(env)) {
        if (RUNTIME_ENV.has(key)) continue;
        assert.ok(key in schema, `${name} sets ${key}, which its configuration does not read`);
      }
      // Storage's malloc settings are the ones the code documents and `nearhub up` sets.
      if (env["GLIBC_TUNABLES"] !== undefined) assert.equal(env["GLIBC_TUNABLES"], STREAMING_MALLOC_TUNABLES);
    });

    test(`${name}: runs its own entry point from the one image, with a health check`, () => {
      const service = compose.services[name];
      assert.ok(service?.command, `${name} has no command`);
      // node, V8 flags only (e.g. the gateway's --max-semi-space-size), then the service's entry.
      const argv = service.command ?? [];
      assert.equal(argv[0], "node");
      assert.equal(argv.at(-1), `services/${name}/dist/main.js`);
      for (const flag of argv.slice(1, -1))
        assert.match(flag, /^--[a-z-]+(=\w+)?$/, `${name}: unexpected argument ${flag}`);
      assert.ok(existsSync(`${root}services/${name}/src/main.ts`), `services/${name}/src/main.ts is missing`);
      const check = JSON.stringify(service.healthcheck?.test ?? "");
      assert.match(check, /healthz/, `${name}'s health check does not call /healthz`);
      assert.equal(service.depends_on?.["nats"]?.condition, "service_healthy");
    });
  }

  test("refuses to start without NEARHUB_INTERNAL_KEY or NEARHUB_ADMIN_TOKEN, naming the variable", () => {
    // Exactly these two are required (`${VAR:?message}`); everything else has a default.
    assert.deepEqual([...requiredVariables().keys()].sort(), Object.keys(required).sort());
    const hints: Record<string, RegExp> = {
      NEARHUB_INTERNAL_KEY: /openssl rand -base64 32/,
      NEARHUB_ADMIN_TOKEN: /nearhub token generate/,
    };
    for (const name of Object.keys(required)) {
      // Unset, and empty (what a copied .env.example holds until it is filled in).
      for (const value of [undefined, ""]) {
        const vars = { ...required, [name]: value };
        assert.throws(
          () => loadCompose(vars),
          (err: unknown) => {
            assert.ok(err instanceof MissingVariableError, String(err));
            assert.equal(err.variable, name);
            assert.match(err.message, new RegExp(`required variable ${name} is missing a value`));
            assert.match(err.message, new RegExp(`set ${name} in \\.env`), "the message does not say where to set it");
            assert.match(err.message, hints[name]!, "the message does not say how to make one");
            return true;
          },
          `compose starts with ${name} ${value === undefined ? "unset" : "empty"}`,
        );
      }
    }
  });

  test("access-control settings in .env reach every service, and bad ones fail its schema", () => {
    const settings = {
      ...required,
      NEARHUB_ANONYMOUS_READ: "github.com/*,models/*",
      NEARHUB_AUDIT_READS: "off",
      NEARHUB_OIDC_ISSUER: "https://login.example.com/realms/acme",
      NEARHUB_OIDC_AUDIENCE: "nearhub",
      NEARHUB_OIDC_JWKS_URL: "https://login.example.com/realms/acme/certs",
      NEARHUB_OIDC_USER_CLAIM: "preferred_username",
      NEARHUB_OIDC_GROUPS_CLAIM: "roles",
    };
    const envOf = (file: ReturnType<typeof loadCompose>, name: string) =>
      Object.fromEntries(
        Object.entries(file.services[name]?.environment ?? {}).map(([k, v]) => [k, v === null ? undefined : String(v)]),
      );
    const configured = loadCompose(settings);
    for (const [name, schema] of Object.entries(schemas)) {
      const config = parseEnv(name, schema, envOf(configured, name)) as unknown as CommonConfig;
      assert.deepEqual(config.NEARHUB_ANONYMOUS_READ, ["github.com/*", "models/*"]);
      assert.equal(config.NEARHUB_AUDIT_READS, "off");
      assert.equal(config.NEARHUB_OIDC_ISSUER, settings.NEARHUB_OIDC_ISSUER);
      assert.equal(config.NEARHUB_OIDC_AUDIENCE, "nearhub");
      assert.equal(config.NEARHUB_OIDC_JWKS_URL, settings.NEARHUB_OIDC_JWKS_URL);
      assert.equal(config.NEARHUB_OIDC_USER_CLAIM, "preferred_username");
      assert.equal(config.NEARHUB_OIDC_GROUPS_CLAIM, "roles");
    }
    // Values compose passes through but the services refuse, each naming the variable.
    const bad: Array<[string, string]> = [
      ["NEARHUB_INTERNAL_KEY", Buffer.from("sixteen bytes!!!").toString("base64")],
      ["NEARHUB_INTERNAL_KEY", "not base64 at all, and short"],
      ["NEARHUB_ADMIN_TOKEN", "nhp_0123_secret"],
      ["NEARHUB_ADMIN_TOKEN", `ghp_${"a".repeat(40)}`],
      ["NEARHUB_ADMIN_TOKEN", `${generateToken().token}x`],
      ["NEARHUB_ANONYMOUS_READ", "../../etc/*"],
      ["NEARHUB_AUDIT_READS", "maybe"],
      ["NEARHUB_OIDC_ISSUER", "login.example.com"],
      ["NEARHUB_OIDC_USER_CLAIM", "x".repeat(10_000)],
    ];
    for (const [variable, value] of bad) {
      const env = envOf(loadCompose({ ...required, [variable]: value }), "edge");
      assert.equal(env[variable], value);
      assert.throws(
        () => parseEnv("edge", edgeEnv, env),
        (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith(`${variable} `)),
        `edge accepts ${variable}=${value.slice(0, 40)}`,
      );
    }
  });

  test(".env.example documents every variable, holds no secret, and .env stays out of git", () => {
    const example = new Map<string, string>();
    for (const line of read(".env.example").split("\n")) {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
      if (m) example.set(m[1]!, m[2]!);
    }
    for (const name of composeVariables(composeText())) {
      assert.ok(example.has(name), `.env.example does not document ${name}, which docker-compose.yml reads`);
    }
    for (const name of requiredVariables().keys()) {
      assert.equal(example.get(name), "", `.env.example holds a value for the secret ${name}`);
    }
    // Copied as is, it stops compose at the first missing secret; filled in, every service starts.
    const vars = Object.fromEntries(example);
    assert.throws(() => loadCompose(vars), MissingVariableError);
    const filled = loadCompose({ ...vars, ...requiredValues() });
    for (const [name, schema] of Object.entries(schemas)) {
      const env = Object.fromEntries(
        Object.entries(filled.services[name]?.environment ?? {}).map(([k, v]) => [
          k,
          v === null ? undefined : String(v),
        ]),
      );
      parseEnv(name, schema, env);
    }
    // The recipes .env.example gives make values the services accept.
    const text = read(".env.example");
    assert.match(text, /^#\s+openssl rand -base64 32$/m);
    assert.match(text, /^#\s+npx nearhub token generate\b/m);
    const recipe = /^#\s+(echo "nhp_\$\(openssl .*)$/m.exec(text)?.[1];
    assert.ok(recipe, ".env.example gives no openssl recipe for the admin token");
    const made = {
      NEARHUB_INTERNAL_KEY: execFileSync("openssl", ["rand", "-base64", "32"], { encoding: "utf8" }).trim(),
      NEARHUB_ADMIN_TOKEN: execFileSync("bash", ["-c", recipe], { encoding: "utf8" }).trim(),
    };
    const config = parseEnv("edge", edgeEnv, made);
    assert.equal(config.NEARHUB_ADMIN_TOKEN, made.NEARHUB_ADMIN_TOKEN);
    // git ignores .env (and .env.local and the like) but not the template.
    const ignored = (path: string) => {
      try {
        execFileSync("git", ["check-ignore", "-q", path], { cwd: root, stdio: "ignore" });
        return true;
      } catch {
        return false;
      }
    };
    assert.ok(ignored(".env"), ".env is not in .gitignore");
    assert.ok(ignored(".env.production"), ".env.production is not in .gitignore");
    assert.ok(!ignored(".env.example"), ".env.example is ignored by git");
    // Nor does it reach the image: the build context is an allow-list that excludes it.
    assert.match(read(".dockerignore"), /^\*\*\/\.env$/m);
  });

  test("`docker compose config` agrees with this interpolation (when compose is installed)", (t) => {
    // Compose v2 (`docker compose`) or v1 (`docker-compose`); neither needs a Docker engine for
    // `config`. A temporary folder holds an empty .env so a developer's own .env stays out of it.
    const dir = mkdtempSync(join(tmpdir(), "nearhub-compose-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, ".env"), "");
    const base = { PATH: process.env["PATH"] ?? "", HOME: dir };
    const v2 = spawnSync("docker", ["compose", "version"], { env: base, encoding: "utf8" }).status === 0;
    const v1 = !v2 && spawnSync("docker-compose", ["version"], { env: base, encoding: "utf8" }).status === 0;
    if (!v2 && !v1) {
      t.skip("neither `docker compose` nor `docker-compose` is installed; the checks above cover the file");
      return;
    }
    // v1 predates the top-level `name:`; everything else in the file it reads as v2 does.
    const file = join(dir, "docker-compose.yml");
    writeFileSync(file, v1 ? composeText().replace(/^name: .*$/m, "") : composeText());
    const config = (vars: Record<string, string>) =>
      v2
        ? spawnSync("docker", ["compose", "-f", file, "--env-file", join(dir, ".env"), "config"], {
            env: { ...base, ...vars },
            encoding: "utf8",
          })
        : spawnSync("docker-compose", ["-f", file, "config"], {
            cwd: dir,
            env: { ...base, ...vars },
            encoding: "utf8",
          });

    const ok = config(required);
    assert.equal(ok.status, 0, ok.stderr);
    const real = parse(ok.stdout) as {
      services: Record<string, { environment?: Record<string, string | number | boolean | null> }>;
    };
    const strings = (env: Record<string, string | number | boolean | null> = {}) =>
      Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v === null ? "" : String(v)]));
    for (const name of Object.keys(schemas)) {
      assert.deepEqual(
        strings(real.services[name]?.environment),
        strings(compose.services[name]?.environment),
        `${name}: compose interpolates its environment differently from compose-file.ts`,
      );
    }
    for (const name of Object.keys(required)) {
      for (const value of [undefined, ""]) {
        const vars = Object.fromEntries(
          Object.entries({ ...required, [name]: value }).filter((e): e is [string, string] => e[1] !== undefined),
        );
        const refused = config(vars);
        assert.notEqual(refused.status, 0, `compose starts with ${name} ${value === undefined ? "unset" : "empty"}`);
        assert.ok(
          refused.stderr.includes(requiredVariables().get(name)!),
          `compose's refusal does not give the hint for ${name}: ${refused.stderr.slice(-400)}`,
        );
      }
    }
  });

  test("NATS runs 2.12 with JetStream syncing every write", () => {
    const nats = compose.services["nats"];
    assert.ok(nats?.image?.startsWith("nats:2.12"), `nats image is ${nats?.image ?? "missing"}`);
    const conf = read("infra/nats/nats.conf");
    assert.match(conf, /jetstream\s*\{[^}]*sync_interval:\s*always/s);
  });

  test("the supporting stack is present", () => {
    for (const name of ["minio", "elasticsearch", "prometheus", "grafana", "jaeger"]) {
      assert.ok(compose.services[name], `no ${name} service`);
    }
    const mcInit = Object.entries(compose.services).find(([, s]) => JSON.stringify(s).includes("mc mb"));
    assert.ok(mcInit, "nothing creates the MinIO bucket");
    const storage = compose.services["storage"]?.environment ?? {};
    assert.ok(
      JSON.stringify(mcInit[1]).includes(String(storage["NEARHUB_S3_BUCKET"])),
      "the created bucket is not the one storage uses",
    );
  });

  test("Prometheus scrapes every service's metrics port, and its alert rules load", () => {
    const prom = parse(read("infra/prometheus/prometheus.yml")) as {
      scrape_configs: Array<{ job_name: string; static_configs: Array<{ targets: string[] }> }>;
      rule_files?: string[];
    };
    const targets = prom.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets));
    for (const [name, service] of Object.entries(compose.services).filter(([n]) => n in schemas)) {
      const port = service.environment?.["NEARHUB_METRICS_PORT"] ?? service.environment?.["NEARHUB_HTTP_PORT"];
      assert.ok(targets.includes(`${name}:${String(port)}`), `Prometheus does not scrape ${name}:${String(port)}`);
    }
    const alerts = parse(read("infra/prometheus/alerts.yml")) as {
      groups: Array<{ rules: Array<{ alert: string; expr: string }> }>;
    };
    const rules = alerts.groups.flatMap((g) => g.rules);
    assert.ok(rules.length >= 4);
    for (const rule of rules) assert.ok(rule.alert && rule.expr, "every rule has a name and an expression");
  });

  test("Grafana has the Prometheus data source and a nearhub dashboard", () => {
    const ds = parse(read("infra/grafana/provisioning/datasources/prometheus.yml")) as {
      datasources: Array<{ type: string }>;
    };
    assert.ok(ds.datasources.some((d) => d.type === "prometheus"));
    const dashboard = JSON.parse(read("infra/grafana/dashboards/nearhub.json")) as {
      panels: Array<{ targets?: Array<{ expr: string }> }>;
    };
    const exprs = dashboard.panels.flatMap((p) => p.targets ?? []).map((t) => t.expr);
    assert.ok(exprs.some((e) => e.includes("nearhub_rpc_server_duration_seconds")));
  });
});
