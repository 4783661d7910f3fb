/**
 * Gives each test suite its dependencies, in this order: URLs from the environment
 * (NATS_URL, S3_ENDPOINT, ELASTICSEARCH_URL), testcontainers when a Docker engine answers,
 * local processes otherwise (the NATS server on 127.0.0.1:4222 or a nats-server child;
 * s3rver in-process for the S3 protocol). What cannot be had makes the suite skip with a reason.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Client as MinioClient } from "minio";

/** A unique namespace for streams, buckets and subjects on the shared NATS server. */
export function uniqueNamespace(prefix = "t"): string {
  return `${prefix}${randomBytes(5).toString("hex")}`;
}

/** A fresh temporary folder, removed by the returned cleanup. */
export async function tempDir(prefix = "nearhub-test-"): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

function listening(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.setTimeout(500, () => (socket.destroy(), resolve(false)));
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
  });
}

/** True when a Docker engine answers, so testcontainers can start containers. */
export async function dockerAvailable(): Promise<boolean> {
  const host = process.env["DOCKER_HOST"];
  if (host?.startsWith("tcp://")) {
    const url = new URL(host.replace("tcp://", "http://"));
    return listening(url.hostname, Number(url.port || 2375));
  }
  const socket = host?.startsWith("unix://") ? host.slice(7) : "/var/run/docker.sock";
  if (!existsSync(socket)) return false;
  return new Promise((resolve) => {
    const s = connect(socket);
    s.setTimeout(1000, () => (s.destroy(), resolve(false)));
    s.once("connect", () => {
      s.write("GET /_ping HTTP/1.0\r\n\r\n");
    });
    s.once("data", (d) => (s.destroy(), resolve(d.toString().includes("200"))));
    s.once("error", () => resolve(false));
  });
}

/** A JetStream-enabled NATS server for the suite, and how to let it go. */
export interface NatsHandle {
  url: string;
  stop(): Promise<void>;
}

let sharedNats: Promise<NatsHandle> | undefined;

/** The NATS server tests use (one per test process). */
export function nats(): Promise<NatsHandle> {
  sharedNats ??= findNats();
  return sharedNats;
}

async function findNats(): Promise<NatsHandle> {
  const fromEnv = process.env["NATS_URL"];
  if (fromEnv) return { url: fromEnv, stop: async () => undefined };
  if (await dockerAvailable()) {
    const { GenericContainer, Wait } = await import("testcontainers");
    const container = await new GenericContainer("nats:2.12-alpine")
      .withCommand(["-js"])
      .withExposedPorts(4222)
      .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
      .start();
    return {
      url: `nats://${container.getHost()}:${container.getMappedPort(4222)}`,
      stop: async () => void (await container.stop()),
    };
  }
  if (await listening("127.0.0.1", 4222)) return { url: "nats://127.0.0.1:4222", stop: async () => undefined };
  return startNatsServer();
}

/** Starts `nats-server -js` on a free port with a temporary store. */
export async function startNatsServer(): Promise<NatsHandle> {
  const binary =
    ["/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server"].find((p) => existsSync(p)) ??
    "nats-server";
  const store = await tempDir("nearhub-nats-");
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child: ChildProcess = spawn(binary, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", store.path], {
    stdio: "ignore",
  });
  for (let i = 0; i < 100 && !(await listening("127.0.0.1", port)); i++) await sleep(50);
  return {
    url: `nats://127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGTERM");
      await store.cleanup();
    },
  };
}

/** Where an S3 server is and the credentials for it. */
export interface S3Access {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
}

/** An S3 endpoint for the suite. */
export interface S3Handle extends S3Access {
  /** A minio client with the handle's credentials, path-style, for setting up and checking. */
  admin: MinioClient;
  /** Creates a uniquely named bucket and returns its name. */
  createBucket(): Promise<string>;
  stop(): Promise<void>;
}

/** A minio client for `access` (path-style; TLS when the endpoint is https). */
export async function s3Client(access: S3Access): Promise<MinioClient> {
  const { Client } = await import("minio");
  const url = new URL(access.endpoint);
  return new Client({
    endPoint: url.hostname,
    port: Number(url.port || (url.protocol === "https:" ? 443 : 80)),
    useSSL: url.protocol === "https:",
    accessKey: access.accessKey,
    secretKey: access.secretKey,
    pathStyle: true,
    region: access.region,
  });
}

/** S3 from S3_ENDPOINT, a MinIO container, or s3rver in-process. */
export async function s3(): Promise<S3Handle> {
  const make = async (
    endpoint: string,
    accessKey: string,
    secretKey: string,
    stop: () => Promise<void>,
  ): Promise<S3Handle> => {
    const access = { endpoint, accessKey, secretKey, region: "us-east-1" };
    const admin = await s3Client(access);
    return {
      ...access,
      admin,
      async createBucket() {
        const name = `nearhub-${randomBytes(5).toString("hex")}`;
        await admin.makeBucket(name, access.region);
        return name;
      },
      stop,
    };
  };
  const fromEnv = process.env["S3_ENDPOINT"];
  if (fromEnv) {
    return make(
      fromEnv,
      process.env["S3_ACCESS_KEY"] ?? "minioadmin",
      process.env["S3_SECRET_KEY"] ?? "minioadmin",
      async () => undefined,
    );
  }
  if (await dockerAvailable()) {
    const { GenericContainer, Wait } = await import("testcontainers");
    const container = await new GenericContainer("minio/minio:latest")
      .withCommand(["server", "/data"])
      .withExposedPorts(9000)
      .withWaitStrategy(Wait.forHttp("/minio/health/live", 9000))
      .start();
    return make(
      `http://${container.getHost()}:${container.getMappedPort(9000)}`,
      "minioadmin",
      "minioadmin",
      async () => void (await container.stop()),
    );
  }
  const { default: S3rver } = await import("s3rver");
  const dir = await tempDir("nearhub-s3-");
  const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: dir.path });
  const address = (await server.run()) as { address: string; port: number };
  return make(`http://127.0.0.1:${address.port}`, "S3RVER", "S3RVER", async () => {
    await server.close();
    await dir.cleanup();
  });
}

/** An Elasticsearch URL, or the reason there is none (the suite then skips). */
export async function elasticsearch(): Promise<{ url: string } | { skip: string }> {
  const fromEnv = process.env["ELASTICSEARCH_URL"];
  if (fromEnv) return { url: fromEnv };
  if (await dockerAvailable()) {
    const { GenericContainer, Wait } = await import("testcontainers");
    const container = await new GenericContainer("docker.elastic.co/elasticsearch/elasticsearch:8.15.0")
      .withEnvironment({
        "discovery.type": "single-node",
        "xpack.security.enabled": "false",
        ES_JAVA_OPTS: "-Xms512m -Xmx512m",
      })
      .withExposedPorts(9200)
      .withWaitStrategy(Wait.forHttp("/_cluster/health", 9200))
      .start();
    return { url: `http://${container.getHost()}:${container.getMappedPort(9200)}` };
  }
  return { skip: "no Elasticsearch: set ELASTICSEARCH_URL or run a Docker engine for testcontainers" };
}

const derive = (namespace: string, what: string) => createHash("sha256").update(`${namespace}/${what}`).digest();

/**
 * The bootstrap admin API token of a test namespace (`serviceEnv` configures it on every
 * service): tests act as an administrator with it unless they test access control itself.
 */
export function adminToken(namespace: string): string {
  return `nhp_${derive(namespace, "id").toString("hex").slice(0, 16)}_${derive(namespace, "secret").toString("base64url")}`;
}

/** gRPC metadata / HTTP headers that authenticate as the namespace's bootstrap admin. */
export function adminAuth(namespace: string): { authorization: string } {
  return { authorization: `Bearer ${adminToken(namespace)}` };
}

/** The environment of one in-process service under test. */
export function serviceEnv(
  natsUrl: string,
  namespace: string,
  dataDir: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    NATS_URL: natsUrl,
    NEARHUB_NAMESPACE: namespace,
    NEARHUB_DATA_DIR: dataDir,
    NEARHUB_GRPC_PORT: "0",
    NEARHUB_METRICS_PORT: "0",
    NEARHUB_HTTP_PORT: "0",
    NEARHUB_GIT_HTTP_PORT: "0",
    LOG_LEVEL: "silent",
    NEARHUB_SHUTDOWN_TIMEOUT_MS: "2000",
    // One shared service secret and one bootstrap admin token per namespace.
    NEARHUB_INTERNAL_KEY: derive(namespace, "internal-key").toString("base64"),
    NEARHUB_ADMIN_TOKEN: adminToken(namespace),
    ...extra,
  };
}

/** Deletes every stream of a namespace (KV buckets are streams too). */
export async function deleteNamespace(natsUrl: string, namespace: string): Promise<void> {
  const { connect: natsConnect } = await import("@nats-io/transport-node");
  const { jetstreamManager } = await import("@nats-io/jetstream");
  const nc = await natsConnect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const upper = namespace.toUpperCase();
    for await (const info of jsm.streams.list()) {
      const name = info.config.name;
      if (name.startsWith(`${upper}_`) || name.startsWith(`KV_${namespace}_`)) await jsm.streams.delete(name);
    }
  } finally {
    await nc.close();
  }
}

/** Polls `check` until it returns a value or `timeoutMs` passes. */
export async function eventually<T>(
  check: () => Promise<T | undefined>,
  timeoutMs = 10_000,
  what = "condition",
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ""}`);
}
export { startHubDouble, sha256Hex, type HubDouble, type HubFile } from "./hf-hub-double.js";
export { createTestPki, type CertFiles, type TestPki } from "./test-pki.js";
export { createLfsDouble, type LfsDouble } from "./git-lfs-double.js";
