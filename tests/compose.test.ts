import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { parseEnv } from "@nearhub/platform";
import { auditEnv } from "@nearhub/audit";
import { edgeEnv } from "@nearhub/edge";
import { indexingEnv } from "@nearhub/indexing";
import { inferenceEnv } from "@nearhub/inference-gateway";
import { storageEnv } from "@nearhub/storage";
import { syncEnv } from "@nearhub/sync";

// Docker cannot run here, so the compose stack is checked statically: every nearhub service's
// environment must pass that service's own configuration schema, and every piece the
// operators rely on (health checks, NATS fsync, scrape targets) must be wired.
const root = fileURLToPath(new URL("..", import.meta.url));
const read = (path: string) => readFileSync(`${root}${path}`, "utf8");

interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string | number | boolean | null>;
  healthcheck?: { test: string[] | string };
  depends_on?: Record<string, { condition: string }>;
  volumes?: string[];
}

/** Compose's variable interpolation (`${VAR}`, `${VAR:-default}`, `$$`), with no variables set. */
function interpolate(text: string): string {
  return text.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g,
    (match, _name: string | undefined, fallback: string | undefined) => (match === "$$" ? "$" : (fallback ?? "")),
  );
}

const compose = parse(interpolate(read("docker-compose.yml")), { merge: true }) as {
  services: Record<string, ComposeService>;
};
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
      const config = parseEnv(name, schema, env) as { NATS_URL: string; NEARHUB_BIND_HOST: string };
      assert.equal(config.NATS_URL, "nats://nats:4222");
      assert.equal(config.NEARHUB_BIND_HOST, "0.0.0.0");
      for (const key of Object.keys(env)) {
        assert.ok(key in schema, `${name} sets ${key}, which its configuration does not read`);
      }
    });

    test(`${name}: runs its own entry point from the one image, with a health check`, () => {
      const service = compose.services[name];
      assert.ok(service?.command, `${name} has no command`);
      assert.deepEqual(service.command, ["node", `services/${name}/dist/main.js`]);
      assert.ok(existsSync(`${root}services/${name}/src/main.ts`), `services/${name}/src/main.ts is missing`);
      const check = JSON.stringify(service.healthcheck?.test ?? "");
      assert.match(check, /healthz/, `${name}'s health check does not call /healthz`);
      assert.equal(service.depends_on?.["nats"]?.condition, "service_healthy");
    });
  }

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
