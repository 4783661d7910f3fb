import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ConfigError, commonEnv, parseEnv, port } from "./config.js";

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected a ConfigError");
}

describe("parseEnv with the common variables", () => {
  test("an empty environment gives every default", () => {
    const config = parseEnv("sync", commonEnv, {});
    assert.deepEqual(config, {
      NATS_URL: "nats://127.0.0.1:4222",
      NEARHUB_NAMESPACE: "",
      NEARHUB_BIND_HOST: "127.0.0.1",
      NEARHUB_METRICS_PORT: 0,
      NEARHUB_DATA_DIR: ".nearhub",
      LOG_LEVEL: "info",
      NEARHUB_NATS_CONNECT_TIMEOUT_MS: 15_000,
      NEARHUB_STREAM_REPLICAS: 1,
      NEARHUB_SHUTDOWN_TIMEOUT_MS: 4000,
      NEARHUB_TLS_CLIENT_AUTH: "none",
      NEARHUB_ANONYMOUS_READ: [],
      NEARHUB_AUDIT_READS: "on",
      NEARHUB_OIDC_USER_CLAIM: "sub",
      NEARHUB_OIDC_GROUPS_CLAIM: "groups",
    });
  });

  test("values are parsed and coerced", () => {
    const config = parseEnv("sync", commonEnv, {
      NATS_URL: "nats://nats-a:4222, nats://nats-b:4222",
      NEARHUB_NAMESPACE: "t1abc",
      NEARHUB_BIND_HOST: "0.0.0.0",
      NEARHUB_METRICS_PORT: "9464",
      NEARHUB_DATA_DIR: "/var/lib/nearhub",
      LOG_LEVEL: "debug",
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://jaeger:4318",
      NEARHUB_NATS_MONITOR_URL: "http://nats:8222",
      NEARHUB_SHUTDOWN_TIMEOUT_MS: "2500",
      UNRELATED: "ignored",
    });
    assert.equal(config.NEARHUB_METRICS_PORT, 9464);
    assert.equal(config.NEARHUB_SHUTDOWN_TIMEOUT_MS, 2500);
    assert.equal(config.LOG_LEVEL, "debug");
    assert.equal(config.OTEL_EXPORTER_OTLP_ENDPOINT, "http://jaeger:4318");
    assert.equal(config.NEARHUB_NATS_MONITOR_URL, "http://nats:8222");
    assert.equal(config.NATS_URL, "nats://nats-a:4222, nats://nats-b:4222");
    assert.equal("UNRELATED" in config, false);
  });

  test("an empty string counts as unset", () => {
    const config = parseEnv("sync", commonEnv, {
      NATS_URL: "",
      NEARHUB_METRICS_PORT: "",
      LOG_LEVEL: "",
      OTEL_EXPORTER_OTLP_ENDPOINT: "",
      NEARHUB_BIND_HOST: "",
    });
    assert.equal(config.NATS_URL, "nats://127.0.0.1:4222");
    assert.equal(config.NEARHUB_METRICS_PORT, 0);
    assert.equal(config.LOG_LEVEL, "info");
    assert.equal(config.OTEL_EXPORTER_OTLP_ENDPOINT, undefined);
    assert.equal(config.NEARHUB_BIND_HOST, "127.0.0.1");
  });

  test("every problem is reported at once, each naming the variable, the value and the accepted form", () => {
    const error = configError(() =>
      parseEnv("sync", commonEnv, {
        NATS_URL: "http://nats:4222",
        NEARHUB_NAMESPACE: "Bad-NS",
        NEARHUB_METRICS_PORT: "70000",
        LOG_LEVEL: "loud",
        OTEL_EXPORTER_OTLP_ENDPOINT: "not a url",
        NEARHUB_SHUTDOWN_TIMEOUT_MS: "soon",
      }),
    );
    assert.equal(error.name, "ConfigError");
    assert.equal(error.problems.length, 6);
    const problem = (variable: string) => {
      const found = error.problems.find((p) => p.startsWith(`${variable} `));
      assert.ok(found, `a problem names ${variable}: ${error.problems.join(" | ")}`);
      return found;
    };
    assert.match(
      problem("NATS_URL"),
      /must be nats:\/\/host:port .*e\.g\. nats:\/\/127\.0\.0\.1:4222 \(got "http:\/\/nats:4222"\)/,
    );
    assert.match(problem("NEARHUB_NAMESPACE"), /lower-case letters and digits.*\(got "Bad-NS"\)/);
    assert.match(problem("NEARHUB_METRICS_PORT"), /must be a whole number from 0 to 65535 \(got "70000"\)/);
    assert.match(problem("LOG_LEVEL"), /must be one of debug, info, warn, error, silent \(got "loud"\)/);
    assert.match(problem("OTEL_EXPORTER_OTLP_ENDPOINT"), /must be an http\(s\) URL such as http:\/\/jaeger:4318/);
    assert.match(
      problem("NEARHUB_SHUTDOWN_TIMEOUT_MS"),
      /must be whole milliseconds from 100 to 120000, e\.g\. 5000 \(got "soon"\)/,
    );
    // One message carries them all, with the service name and the count.
    assert.match(error.message, /^sync: invalid configuration \(6 problems\):\n {2}- /);
    for (const p of error.problems) assert.ok(error.message.includes(`  - ${p}`));
  });

  test("a single problem is counted in the singular", () => {
    const error = configError(() => parseEnv("audit", commonEnv, { LOG_LEVEL: "trace" }));
    assert.match(error.message, /^audit: invalid configuration \(1 problem\):/);
  });

  test("NATS_URL accepts the forms nats.js accepts and rejects the rest", () => {
    for (const good of [
      "nats://127.0.0.1:4222",
      "nats://nats",
      "tls://nats.example.com:4443",
      "ws://nats:8080",
      "nats://user:secret@nats:4222",
      "nats:4222",
      "nats://a:4222,nats://b:4222",
    ]) {
      assert.equal(parseEnv("t", commonEnv, { NATS_URL: good }).NATS_URL, good);
    }
    for (const bad of [
      "http://nats:4222",
      "nats://",
      "nats",
      "nats://host:4222/path",
      "nats://a b:4222",
      "nats://a:4222,",
    ]) {
      const error = configError(() => parseEnv("t", commonEnv, { NATS_URL: bad }));
      assert.equal(error.problems.length, 1, bad);
      assert.match(error.problems[0] ?? "", /^NATS_URL must be nats:\/\/host:port/, bad);
    }
  });

  test("the timeouts are bounded, and the message gives the bounds", () => {
    for (const bad of ["10", "1500.5", "999999999"]) {
      const error = configError(() => parseEnv("t", commonEnv, { NEARHUB_SHUTDOWN_TIMEOUT_MS: bad }));
      assert.deepEqual(error.problems, [
        `NEARHUB_SHUTDOWN_TIMEOUT_MS must be whole milliseconds from 100 to 120000, e.g. 5000 (got "${bad}")`,
      ]);
    }
    const connect = configError(() => parseEnv("t", commonEnv, { NEARHUB_NATS_CONNECT_TIMEOUT_MS: "50" }));
    assert.deepEqual(connect.problems, [
      'NEARHUB_NATS_CONNECT_TIMEOUT_MS must be whole milliseconds from 100 to 600000, e.g. 15000 (got "50")',
    ]);
    assert.equal(
      parseEnv("t", commonEnv, { NEARHUB_NATS_CONNECT_TIMEOUT_MS: "500" }).NEARHUB_NATS_CONNECT_TIMEOUT_MS,
      500,
    );
  });

  test("a long bad value is shortened in the message", () => {
    const error = configError(() => parseEnv("t", commonEnv, { LOG_LEVEL: "x".repeat(200) }));
    assert.ok(error.problems[0]?.includes(`got "${"x".repeat(80)}…"`));
    assert.ok(!error.problems[0]?.includes("x".repeat(81)));
  });
});

describe("parseEnv with a service's own schema", () => {
  const shape = {
    ...commonEnv,
    SYNC_GRPC_PORT: port(50051),
    SYNC_INTERVAL_S: z.coerce
      .number({ error: "must be seconds, e.g. 300" })
      .int()
      .min(60, "must be at least 60 (seconds)"),
    SYNC_TOKEN: z.string({ error: "must be set to the upstream access token" }),
  };

  test("required variables that are missing are reported as unset", () => {
    const error = configError(() => parseEnv("sync", shape, { SYNC_INTERVAL_S: "10" }));
    assert.deepEqual(error.problems.sort(), [
      'SYNC_INTERVAL_S must be at least 60 (seconds) (got "10")',
      "SYNC_TOKEN must be set to the upstream access token (unset)",
    ]);
  });

  test("port() takes its default, 0, and rejects what is not a port", () => {
    const ok = parseEnv("sync", shape, { SYNC_INTERVAL_S: "300", SYNC_TOKEN: "t" });
    assert.equal(ok.SYNC_GRPC_PORT, 50051);
    assert.equal(
      parseEnv("sync", shape, { SYNC_INTERVAL_S: "300", SYNC_TOKEN: "t", SYNC_GRPC_PORT: "0" }).SYNC_GRPC_PORT,
      0,
    );
    for (const bad of ["-1", "65536", "80.5", "http"]) {
      const error = configError(() =>
        parseEnv("sync", shape, { SYNC_INTERVAL_S: "300", SYNC_TOKEN: "t", SYNC_GRPC_PORT: bad }),
      );
      assert.deepEqual(error.problems, [`SYNC_GRPC_PORT must be a whole number from 0 to 65535 (got "${bad}")`]);
    }
  });

  test("a secret's value is never quoted in the message", () => {
    const error = configError(() =>
      parseEnv("t", commonEnv, { NEARHUB_INTERNAL_KEY: "s3cr3t!!not-base64", NEARHUB_ADMIN_TOKEN: "nhp_leaky" }),
    );
    const text = error.problems.join("\n");
    assert.doesNotMatch(text, /s3cr3t|nhp_leaky/);
    assert.match(text, /NEARHUB_INTERNAL_KEY must be base64.*\(got 18 characters, not shown\)/);
    assert.match(text, /NEARHUB_ADMIN_TOKEN must look like nhp_.*\(got 9 characters, not shown\)/);
  });

  test("reads process.env by default", () => {
    const saved = process.env["NEARHUB_NAMESPACE"];
    process.env["NEARHUB_NAMESPACE"] = "fromenv";
    try {
      assert.equal(parseEnv("t", commonEnv).NEARHUB_NAMESPACE, "fromenv");
    } finally {
      if (saved === undefined) delete process.env["NEARHUB_NAMESPACE"];
      else process.env["NEARHUB_NAMESPACE"] = saved;
    }
  });
});
