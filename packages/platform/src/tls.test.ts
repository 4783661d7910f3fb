import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { request, type RequestOptions } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import * as tls from "node:tls";
import tlsDefaults from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "@nearhub/proto/health";
import { createTestPki, type TestPki } from "@nearhub/testing";
import { ConfigError, commonEnv, parseEnv } from "./config.js";
import { Code, NearhubError } from "./errors.js";
import { HealthReporter, ServingStatus } from "./health.js";
import { closeHttp, listenHttp, startOpsServer } from "./http-server.js";
import { createLogger, silentLogger, type Logger } from "./logger.js";
import { ServiceMetrics } from "./metrics.js";
import { createClient } from "./rpc-client.js";
import { RpcServer } from "./rpc-server.js";
import { TransportSecurity, isLoopback, type TlsEnv } from "./tls.js";

let pki: TestPki;
before(async () => {
  pki = await createTestPki();
});
after(async () => {
  await pki.cleanup();
});

function env(vars: Record<string, string>): TlsEnv {
  return parseEnv("test", commonEnv, vars);
}

function serverTls(clientAuth: "none" | "request" | "require" = "none"): TransportSecurity {
  return TransportSecurity.load(
    "test",
    env({
      NEARHUB_TLS_CERT: pki.server.cert,
      NEARHUB_TLS_KEY: pki.server.key,
      NEARHUB_TLS_CA: pki.ca,
      NEARHUB_TLS_CLIENT_AUTH: clientAuth,
    }),
  );
}

/** A logger whose lines land in `lines` as parsed JSON. */
function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    service: "test",
    level: "debug",
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  });
  return { logger, lines };
}

type Handshake = { protocol: string | null } | { error: NodeJS.ErrnoException };

/** Opens a TLS connection and reports the negotiated protocol or the error. */
function handshake(port: number, options: tls.ConnectionOptions): Promise<Handshake> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ...options });
    socket.once("secureConnect", () => {
      const protocol = socket.getProtocol();
      socket.destroy();
      resolve({ protocol });
    });
    socket.once("error", (error) => resolve({ error }));
  });
}

/** A client that offers only TLS 1.0 and 1.1 (security level 0 so OpenSSL 3 will offer them at all). */
const TLS11_ONLY: tls.ConnectionOptions = {
  minVersion: "TLSv1",
  maxVersion: "TLSv1.1",
  ciphers: "DEFAULT@SECLEVEL=0",
  rejectUnauthorized: false,
};

async function httpsGet(
  port: number,
  options: RequestOptions,
): Promise<{ status: number; body: string; protocol: string | null }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/livez", agent: false, ...options }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, body, protocol: (res.socket as tls.TLSSocket).getProtocol() }),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

interface Listeners {
  httpPort: number;
  grpcPort: number;
  close(): Promise<void>;
}

/** The ops HTTP listener and a gRPC server with grpc.health.v1, both with `security`. */
async function startListeners(security: TransportSecurity): Promise<Listeners> {
  const metrics = new ServiceMetrics("tlstest");
  const ops = await startOpsServer({ host: "127.0.0.1", port: 0, metrics, ready: () => true, tls: security });
  const rpc = new RpcServer({
    service: "tlstest",
    logger: silentLogger,
    metrics,
    credentials: security.grpcServerCredentials(),
  });
  const health = new HealthReporter();
  health.setAll(ServingStatus.SERVING);
  rpc.addService(Health, health.implementation());
  const grpcPort = await rpc.listen("127.0.0.1", 0);
  return {
    httpPort: ops.port,
    grpcPort,
    close: async () => {
      await rpc.shutdown(500);
      await closeHttp(ops.server);
    },
  };
}

async function grpcHealth(
  port: number,
  context: tls.SecureContextOptions,
): Promise<{ ok: true; status: Status } | { ok: false; error: NearhubError }> {
  const client = createClient(Health, `localhost:${port}`, {
    credentials: grpc.credentials.createFromSecureContext(tls.createSecureContext(context)),
    maxAttempts: 1,
    timeoutMs: 5000,
  });
  try {
    const response = await client.check({ service: "" });
    return { ok: true, status: response.status };
  } catch (error) {
    return { ok: false, error: NearhubError.from(error) };
  } finally {
    client.$close();
  }
}

describe("TLS versions on the HTTP and gRPC listeners", () => {
  let listeners: Listeners;
  before(async () => {
    listeners = await startListeners(serverTls());
  });
  after(async () => {
    await listeners.close();
  });

  test("a client limited to TLS 1.1 can complete a handshake with a server that allows it (control)", async () => {
    const server = tls.createServer({
      cert: await readFile(pki.server.cert),
      key: await readFile(pki.server.key),
      minVersion: "TLSv1",
      ciphers: "DEFAULT@SECLEVEL=0",
    });
    server.on("secureConnection", (s) => s.end());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const result = await handshake((server.address() as AddressInfo).port, TLS11_ONLY);
      assert.deepEqual(result, { protocol: "TLSv1.1" });
    } finally {
      server.close();
    }
  });

  test("the HTTP listener refuses a TLS 1.1 handshake with a protocol_version alert", async () => {
    const result = await handshake(listeners.httpPort, TLS11_ONLY);
    assert.ok("error" in result, "the TLS 1.1 handshake must fail");
    // The alert comes from the server: the client offered TLS 1.1 and was told no.
    assert.equal(result.error.code, "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION");
  });

  test("the gRPC listener refuses a TLS 1.1 handshake with a protocol_version alert", async () => {
    const result = await handshake(listeners.grpcPort, { ...TLS11_ONLY, ALPNProtocols: ["h2"] });
    assert.ok("error" in result, "the TLS 1.1 handshake must fail");
    assert.equal(result.error.code, "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION");
  });

  test("both listeners refuse TLS 1.1 even when the process default allows TLS 1.0 (--tls-min-v1.0)", async () => {
    // What `node --tls-min-v1.0` does; the namespace import is read-only, the module object is not.
    const saved = tlsDefaults.DEFAULT_MIN_VERSION;
    tlsDefaults.DEFAULT_MIN_VERSION = "TLSv1";
    const lax = await startListeners(serverTls());
    try {
      for (const [port, alpn] of [
        [lax.httpPort, []],
        [lax.grpcPort, ["h2"]],
      ] as const) {
        const result = await handshake(port, { ...TLS11_ONLY, ALPNProtocols: [...alpn] });
        assert.ok("error" in result, `port ${port} accepted TLS 1.1`);
        assert.equal(result.error.code, "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION");
      }
    } finally {
      tlsDefaults.DEFAULT_MIN_VERSION = saved;
      await lax.close();
    }
  });

  for (const version of ["TLSv1.2", "TLSv1.3"] as const) {
    test(`the HTTP listener accepts ${version} and serves over it`, async () => {
      const ca = await readFile(pki.ca);
      const response = await httpsGet(listeners.httpPort, { ca, minVersion: version, maxVersion: version });
      assert.equal(response.status, 200);
      assert.deepEqual(JSON.parse(response.body), { status: "alive" });
      assert.equal(response.protocol, version);
    });

    test(`the gRPC listener accepts ${version}: handshake and a health call`, async () => {
      const ca = await readFile(pki.ca);
      const shake = await handshake(listeners.grpcPort, {
        ca,
        minVersion: version,
        maxVersion: version,
        ALPNProtocols: ["h2"],
        servername: "localhost",
      });
      assert.deepEqual(shake, { protocol: version });
      const call = await grpcHealth(listeners.grpcPort, { ca, minVersion: version, maxVersion: version });
      assert.deepEqual(call, { ok: true, status: Status.SERVING });
    });
  }

  test("a client with no TLS 1.3 preference gets TLS 1.3 from both listeners", async () => {
    const ca = await readFile(pki.ca);
    assert.equal((await httpsGet(listeners.httpPort, { ca })).protocol, "TLSv1.3");
    assert.deepEqual(await handshake(listeners.grpcPort, { ca, ALPNProtocols: ["h2"], servername: "localhost" }), {
      protocol: "TLSv1.3",
    });
  });

  test("a plain-text client is not served by the TLS listeners", async () => {
    const plain = await grpcHealth(listeners.grpcPort, {}).then(async () => {
      const client = createClient(Health, `127.0.0.1:${listeners.grpcPort}`, { maxAttempts: 1, timeoutMs: 3000 });
      try {
        await client.check({ service: "" });
        return "served";
      } catch (error) {
        return NearhubError.from(error).code;
      } finally {
        client.$close();
      }
    });
    assert.equal(plain, Code.Unavailable);
    const response = await fetch(`http://127.0.0.1:${listeners.httpPort}/livez`).then(
      (r) => r.status,
      (error: Error) => error.name,
    );
    assert.equal(response, "TypeError", "fetch over http:// must fail against the TLS listener");
  });

  test("a client that does not trust the CA refuses the listeners", async () => {
    await assert.rejects(httpsGet(listeners.httpPort, {}), /self[- ]signed|unable to (get|verify)/i);
    const call = await grpcHealth(listeners.grpcPort, {});
    assert.equal(call.ok, false);
    assert.ok(!call.ok && call.error.code === Code.Unavailable, JSON.stringify(call));
  });
});

describe("mutual TLS", () => {
  const identities = async () => ({
    ca: await readFile(pki.ca),
    client: { cert: await readFile(pki.client.cert), key: await readFile(pki.client.key) },
    stranger: { cert: await readFile(pki.stranger.cert), key: await readFile(pki.stranger.key) },
  });

  test("require: no client certificate is refused, a CA-signed one accepted, a stranger refused (HTTP and gRPC)", async () => {
    const listeners = await startListeners(serverTls("require"));
    try {
      const { ca, client, stranger } = await identities();
      await assert.rejects(httpsGet(listeners.httpPort, { ca }), /certificate|socket hang up|ECONNRESET/i);
      assert.equal((await httpsGet(listeners.httpPort, { ca, ...client })).status, 200);
      await assert.rejects(httpsGet(listeners.httpPort, { ca, ...stranger }), /certificate|socket hang up|ECONNRESET/i);

      const anonymous = await grpcHealth(listeners.grpcPort, { ca });
      assert.ok(!anonymous.ok && anonymous.error.code === Code.Unavailable, JSON.stringify(anonymous));
      assert.deepEqual(await grpcHealth(listeners.grpcPort, { ca, ...client }), { ok: true, status: Status.SERVING });
      const impostor = await grpcHealth(listeners.grpcPort, { ca, ...stranger });
      assert.ok(!impostor.ok && impostor.error.code === Code.Unavailable, JSON.stringify(impostor));
    } finally {
      await listeners.close();
    }
  });

  test("request: every client is let in, only a CA-signed certificate identifies it (HTTP and gRPC)", async () => {
    const security = serverTls("request");
    const { ca, client, stranger } = await identities();
    const server = security.createHttpServer({}, (req, res) => {
      const socket = req.socket as tls.TLSSocket;
      res.end(socket.authorized ? socket.getPeerCertificate().subject.CN : "anonymous");
    });
    await listenHttp(server, "127.0.0.1", 0);
    const httpPort = (server.address() as AddressInfo).port;
    const grpcServer = new grpc.Server();
    grpcServer.addService(
      {
        whoAmI: {
          path: "/test.WhoAmI/WhoAmI",
          requestStream: false,
          responseStream: false,
          requestSerialize: (v: Buffer) => v,
          requestDeserialize: (v: Buffer) => v,
          responseSerialize: (v: Buffer) => v,
          responseDeserialize: (v: Buffer) => v,
        },
      },
      {
        whoAmI: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          const peer = call.getAuthContext().sslPeerCertificate;
          callback(null, Buffer.from(peer ? String(peer.subject.CN) : "anonymous"));
        },
      },
    );
    const grpcPort = await new Promise<number>((resolve, reject) =>
      grpcServer.bindAsync("127.0.0.1:0", security.grpcServerCredentials(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    const whoAmI = (context: tls.SecureContextOptions) =>
      new Promise<string>((resolve, reject) => {
        const c = new grpc.Client(
          `localhost:${grpcPort}`,
          grpc.credentials.createFromSecureContext(tls.createSecureContext(context)),
        );
        c.makeUnaryRequest(
          "/test.WhoAmI/WhoAmI",
          (v: Buffer) => v,
          (v: Buffer) => v,
          Buffer.alloc(0),
          (error, value) => {
            c.close();
            if (error) reject(error);
            else resolve(String(value));
          },
        );
      });
    try {
      assert.equal((await httpsGet(httpPort, { ca, path: "/" })).body, "anonymous");
      assert.equal((await httpsGet(httpPort, { ca, path: "/", ...client })).body, "nearhub-test-client");
      assert.equal((await httpsGet(httpPort, { ca, path: "/", ...stranger })).body, "anonymous");
      assert.equal(await whoAmI({ ca }), "anonymous");
      assert.equal(await whoAmI({ ca, ...client }), "nearhub-test-client");
      assert.equal(await whoAmI({ ca, ...stranger }), "anonymous");
    } finally {
      grpcServer.forceShutdown();
      await closeHttp(server);
    }
  });

  test("service calls present the service's own certificate, so two mTLS services talk to each other", async () => {
    const listeners = await startListeners(serverTls("require"));
    try {
      const caller = serverTls("require");
      const client = createClient(Health, `localhost:${listeners.grpcPort}`, {
        credentials: caller.grpcChannelCredentials(),
        maxAttempts: 1,
      });
      try {
        assert.equal((await client.check({ service: "" })).status, Status.SERVING);
      } finally {
        client.$close();
      }
    } finally {
      await listeners.close();
    }
  });
});

describe("loading certificates at start-up", () => {
  const load = (vars: Record<string, string>, logger?: Logger) => TransportSecurity.load("edge", env(vars), { logger });
  const problemsOf = (fn: () => unknown): string[] => {
    try {
      fn();
    } catch (error) {
      assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
      return error.problems;
    }
    assert.fail("expected the configuration to be refused");
  };

  test("an expired certificate is refused, naming the file and its dates", () => {
    const problems = problemsOf(() => load({ NEARHUB_TLS_CERT: pki.expired.cert, NEARHUB_TLS_KEY: pki.expired.key }));
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^NEARHUB_TLS_CERT: /);
    assert.ok(problems[0]!.includes(pki.expired.cert), problems[0]);
    assert.ok(problems[0]!.includes("expired"), problems[0]);
    assert.ok(problems[0]!.includes("2020-01-01T00:00:00.000Z"), problems[0]);
    assert.ok(problems[0]!.includes(pki.expiredNotAfter), problems[0]);
  });

  test("a certificate not yet valid is refused with its dates", () => {
    const problems = problemsOf(() =>
      load({ NEARHUB_TLS_CERT: pki.notYetValid.cert, NEARHUB_TLS_KEY: pki.notYetValid.key }),
    );
    assert.match(problems[0]!, /not valid yet: valid from 2099-01-01T00:00:00.000Z/);
  });

  test("a certificate ending within 14 days starts with a warning", () => {
    const { logger, lines } = capturingLogger();
    const security = load({ NEARHUB_TLS_CERT: pki.expiringSoon.cert, NEARHUB_TLS_KEY: pki.expiringSoon.key }, logger);
    assert.equal(security.enabled, true);
    const warning = lines.find((l) => l["level"] === "warn");
    assert.ok(warning, "expected a warning line");
    assert.equal(warning["file"], pki.expiringSoon.cert);
    assert.ok(Number(warning["days_left"]) <= 3);
  });

  test("a valid certificate logs nothing and turns TLS on for listeners and service calls", () => {
    const { logger, lines } = capturingLogger();
    const security = load({ NEARHUB_TLS_CERT: pki.server.cert, NEARHUB_TLS_KEY: pki.server.key }, logger);
    assert.equal(security.enabled, true);
    assert.ok(security.client, "service calls use TLS when a certificate is set");
    assert.deepEqual(lines, []);
  });

  test("every problem is listed at once: cert without key, missing CA file, mTLS without CA", () => {
    const problems = problemsOf(() =>
      load({ NEARHUB_TLS_CERT: pki.server.cert, NEARHUB_TLS_CA: join(pki.dir, "nope.pem") }),
    );
    assert.ok(problems.some((p) => p.startsWith("NEARHUB_TLS_KEY is unset but NEARHUB_TLS_CERT is set")));
    assert.ok(problems.some((p) => p.includes("there is no file at") && p.includes("nope.pem")));
    const mtls = problemsOf(() => load({ NEARHUB_TLS_CLIENT_AUTH: "require" }));
    assert.equal(mtls.length, 2);
    assert.match(mtls.join("\n"), /needs NEARHUB_TLS_CERT and NEARHUB_TLS_KEY/);
    assert.match(mtls.join("\n"), /needs NEARHUB_TLS_CA/);
    assert.match(problemsOf(() => load({ NEARHUB_TLS_KEY: pki.server.key }))[0]!, /NEARHUB_TLS_CERT is unset/);
  });

  test("a key of another certificate is refused", () => {
    const problems = problemsOf(() => load({ NEARHUB_TLS_CERT: pki.server.cert, NEARHUB_TLS_KEY: pki.client.key }));
    assert.deepEqual(problems.length, 1);
    assert.match(problems[0]!, /does not belong to the certificate/);
  });

  test("hostile files: garbage, a key given as certificate, a folder, an unreadable file, a huge file", async () => {
    const garbage = join(pki.dir, "garbage.pem");
    await writeFile(garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n");
    const folder = join(pki.dir, "folder");
    await mkdir(folder);
    const huge = join(pki.dir, "huge.pem");
    await writeFile(huge, Buffer.alloc(8 * 1024 * 1024, "A"));
    const locked = join(pki.dir, "locked.key");
    await copyFile(pki.server.key, locked);
    await chmod(locked, 0o000);

    assert.match(
      problemsOf(() => load({ NEARHUB_TLS_CERT: garbage, NEARHUB_TLS_KEY: pki.server.key }))[0]!,
      /does not parse/,
    );
    assert.match(
      problemsOf(() => load({ NEARHUB_TLS_CERT: pki.server.key, NEARHUB_TLS_KEY: pki.server.key }))[0]!,
      /holds no PEM certificate/,
    );
    assert.match(
      problemsOf(() => load({ NEARHUB_TLS_CERT: pki.server.cert, NEARHUB_TLS_KEY: pki.server.cert }))[0]!,
      /not a readable PEM private key/,
    );
    assert.match(
      problemsOf(() => load({ NEARHUB_TLS_CERT: folder, NEARHUB_TLS_KEY: pki.server.key }))[0]!,
      /is a folder/,
    );
    assert.match(
      problemsOf(() => load({ NEARHUB_TLS_CERT: huge, NEARHUB_TLS_KEY: pki.server.key }))[0]!,
      /holds no PEM certificate/,
    );
    if (process.getuid?.() !== 0) {
      assert.match(
        problemsOf(() => load({ NEARHUB_TLS_CERT: pki.server.cert, NEARHUB_TLS_KEY: locked }))[0]!,
        /permission denied/,
      );
    }
  });

  test("a bad NEARHUB_TLS_CLIENT_AUTH value says which values are accepted", () => {
    assert.throws(
      () => parseEnv("edge", commonEnv, { NEARHUB_TLS_CLIENT_AUTH: "optional" }),
      /NEARHUB_TLS_CLIENT_AUTH must be none, request or require \(got "optional"\)/,
    );
  });

  test("no certificate: plain text, and plain-text service calls unless a CA is given", () => {
    assert.equal(load({}).enabled, false);
    assert.equal(load({}).client, undefined);
    const withCa = load({ NEARHUB_TLS_CA: pki.ca });
    assert.equal(withCa.enabled, false);
    assert.ok(withCa.client?.ca);
    assert.equal(load({ NEARHUB_TLS_CA: pki.ca, NEARHUB_TLS_SERVICE_CALLS: "plain" }).client, undefined);
  });
});

describe("the plain-text warning", () => {
  test("is logged when listeners are plain text on a network address, not on loopback, not with TLS", () => {
    const { logger, lines } = capturingLogger();
    TransportSecurity.plain().warnIfPlainText("0.0.0.0", logger, ["sync gRPC"]);
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!["level"], "warn");
    assert.match(String(lines[0]!["msg"]), /plain text on 0\.0\.0\.0: sync gRPC .*NEARHUB_TLS_CERT/);
    for (const host of ["127.0.0.1", "::1", "localhost", "127.0.0.2"]) {
      TransportSecurity.plain().warnIfPlainText(host, logger, ["sync gRPC"]);
    }
    serverTls().warnIfPlainText("0.0.0.0", logger, ["sync gRPC"]);
    assert.equal(lines.length, 1);
  });

  test("loopback detection", () => {
    assert.deepEqual(
      ["127.0.0.1", "::1", "[::1]", "localhost", "LOCALHOST", "0.0.0.0", "::", "10.0.0.1", "127.0.0.1.example.com"].map(
        isLoopback,
      ),
      [true, true, true, true, true, false, false, false, false],
    );
  });
});

describe("createHttpServer", () => {
  test("serves plain HTTP without a certificate and HTTPS with one", async () => {
    for (const security of [TransportSecurity.plain(), serverTls()]) {
      const server = security.createHttpServer({}, (_req, res) => res.end("hello"));
      await listenHttp(server, "127.0.0.1", 0);
      const port = (server.address() as AddressInfo).port;
      try {
        const body = security.enabled
          ? (await httpsGet(port, { ca: await readFile(pki.ca), path: "/" })).body
          : await (await fetch(`http://127.0.0.1:${port}/`)).text();
        assert.equal(body, "hello");
      } finally {
        await closeHttp(server);
      }
    }
  });
});
