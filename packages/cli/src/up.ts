import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { accessSync, constants } from "node:fs";
import { join, resolve, delimiter } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, generateToken } from "@nearhub/platform";
import { Health, HealthCheckResponse_ServingStatus } from "@nearhub/proto/health";
import { streamingMallocEnv } from "@nearhub/storage";
import { freePort, isListening } from "./ports.js";
import { Supervisor, type Supervised } from "./supervisor.js";

/** Options of `nearhub up`. */
export interface UpOptions {
  dataDir: string;
  httpPort: number;
  /** Seconds to wait for every service to report SERVING. */
  readyTimeoutS: number;
  /** Where to look for (or start) NATS when NATS_URL is unset; default 4222. */
  natsPort?: number;
  /** No anonymous reads: every clone and download needs a token. */
  private?: boolean;
  env: NodeJS.ProcessEnv;
}

/** Reads a secret kept in the data folder, creating it (mode 0600) on first start. */
async function secret(file: string, make: () => string): Promise<string> {
  try {
    const value = (await readFile(file, "utf8")).trim();
    if (value) return value;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  const value = make();
  await writeFile(file, `${value}\n`, { mode: 0o600, flag: "wx" }).catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== "EEXIST") throw error;
  });
  return (await readFile(file, "utf8")).trim();
}

interface ServicePlan {
  name: string;
  /** Package export resolving to the service's main module. */
  entry: string;
  grpcPort: number;
  metricsPort: number;
  extraEnv: Record<string, string>;
}

const HOST = "127.0.0.1";

/** Finds an executable on PATH (and in /usr/sbin, where Debian puts nats-server). */
function which(binary: string, env: NodeJS.ProcessEnv): string | undefined {
  const dirs = [...(env["PATH"] ?? "").split(delimiter), "/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = join(dir, binary);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/**
 * `nearhub up`: everything on one machine. Uses NATS_URL, or a server already on
 * 127.0.0.1:4222 (--nats-port), or starts nats-server -js as a child there; starts the six services; prints the
 * URLs and `ready` once all report SERVING; Ctrl-C stops everything, children included.
 * Resolves with the exit code.
 */
export async function up(options: UpOptions): Promise<number> {
  const dataDir = resolve(options.dataDir);
  await mkdir(join(dataDir, "logs"), { recursive: true });
  // The secret the services share, and a bootstrap admin token (the CLI finds it here).
  const internalKey =
    options.env["NEARHUB_INTERNAL_KEY"] ??
    (await secret(join(dataDir, "internal-key"), () => randomBytes(32).toString("base64")));
  const adminToken =
    options.env["NEARHUB_ADMIN_TOKEN"] ?? (await secret(join(dataDir, "admin-token"), () => generateToken().token));
  const anonymousRead = options.env["NEARHUB_ANONYMOUS_READ"] ?? (options.private ? "" : "*");
  const started = Date.now();
  const supervisor = new Supervisor();
  let stopping = false;
  let resolveExit: (code: number) => void = () => undefined;
  const exit = new Promise<number>((r) => (resolveExit = r));

  const shutdown = async (code: number) => {
    if (stopping) return;
    stopping = true;
    process.stdout.write("stopping nearhub…\n");
    // Services first (they drain NATS), then nats-server itself.
    await supervisor.stopAll(4000, (names) => [names.filter((n) => n !== "nats"), ["nats"]]);
    resolveExit(code);
  };
  const onSignal = () => void shutdown(0);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    // 1. NATS
    let natsUrl = options.env["NATS_URL"];
    if (!natsUrl) {
      const natsPort = options.natsPort ?? 4222;
      if (await isListening(HOST, natsPort)) {
        natsUrl = `nats://${HOST}:${natsPort}`;
        process.stdout.write(`using the NATS server already on ${natsUrl}\n`);
      } else {
        const binary = which("nats-server", options.env);
        if (!binary) {
          process.stderr.write(
            `nats-server was not found and nothing answers on 127.0.0.1:${natsPort}.\n` +
              "Install it (Debian/Ubuntu: sudo apt-get install nats-server; macOS: brew install nats-server),\n" +
              "or run one with Docker (docker run -p 4222:4222 nats:2.12 -js), or set NATS_URL.\n",
          );
          await shutdown(1);
          return await exit;
        }
        const port = natsPort;
        const storeDir = join(dataDir, "nats");
        await mkdir(storeDir, { recursive: true });
        const nats = supervisor.start(
          {
            name: "nats",
            command: binary,
            args: ["-js", "-a", HOST, "-p", String(port), "-sd", storeDir],
            env: options.env,
            logFile: join(dataDir, "logs", "nats.log"),
          },
          (code) => {
            if (!stopping) {
              process.stderr.write(`nats-server exited (${code ?? "signal"}); stopping\n`);
              void shutdown(1);
            }
          },
        );
        natsUrl = `nats://${HOST}:${port}`;
        if (!(await waitFor(() => isListening(HOST, port), 10_000))) {
          process.stderr.write(`nats-server did not start:\n${nats.tail.join("\n")}\n`);
          await shutdown(1);
          return await exit;
        }
        process.stdout.write(`started nats-server (JetStream) on ${natsUrl}, store ${storeDir}\n`);
      }
    }

    // 2. Services, each on its default port unless that port is taken.
    const plans: ServicePlan[] = [];
    const plan = async (name: string, grpc: number, metrics: number, extraEnv: Record<string, string> = {}) => {
      const p: ServicePlan = {
        name,
        entry: `@nearhub/${name}/main`,
        grpcPort: await freePort(HOST, grpc),
        metricsPort: await freePort(HOST, metrics),
        extraEnv,
      };
      plans.push(p);
      return p;
    };
    const syncGitPort = await freePort(HOST, 7111);
    const sync = await plan("sync", 7101, 9101, { NEARHUB_GIT_HTTP_PORT: String(syncGitPort) });
    // Storage's file and hashing work runs on libuv's pool: 4 threads (the default) queue up
    // behind concurrent uploads.
    const storage = await plan("storage", 7102, 9102, {
      UV_THREADPOOL_SIZE: options.env["UV_THREADPOOL_SIZE"] ?? "32",
      // Its gRPC messages reuse heap memory instead of fresh mappings (see streamingMallocEnv).
      GLIBC_TUNABLES: streamingMallocEnv(options.env["GLIBC_TUNABLES"]),
    });
    const indexing = await plan("indexing", 7103, 9103, { NEARHUB_STORAGE_ADDR: `${HOST}:${storage.grpcPort}` });
    const audit = await plan("audit", 7104, 9104);
    const inference = await plan("inference-gateway", 8001, 8002, {
      NEARHUB_STORAGE_ADDR: `${HOST}:${storage.grpcPort}`,
      // A 32 MiB young generation: request handling allocates short-lived objects at a high rate
      // (bench/inference measured about a third less CPU per call).
      NODE_OPTIONS: [options.env["NODE_OPTIONS"], "--max-semi-space-size=32"].filter(Boolean).join(" "),
    });
    const httpPort = options.httpPort === 0 ? await freePort(HOST, 0) : options.httpPort;
    if (options.httpPort !== 0 && !(await freePort(HOST, httpPort).then((p) => p === httpPort))) {
      process.stderr.write(`port ${httpPort} is in use; choose another with --port\n`);
      await shutdown(1);
      return await exit;
    }
    const edge = await plan("edge", 7100, 0, {
      NEARHUB_HTTP_PORT: String(httpPort),
      NEARHUB_SYNC_ADDR: `${HOST}:${sync.grpcPort}`,
      NEARHUB_SYNC_GIT_URL: `http://${HOST}:${syncGitPort}`,
      NEARHUB_STORAGE_ADDR: `${HOST}:${storage.grpcPort}`,
      NEARHUB_INDEXING_ADDR: `${HOST}:${indexing.grpcPort}`,
      NEARHUB_AUDIT_ADDR: `${HOST}:${audit.grpcPort}`,
      NEARHUB_INFERENCE_ADDR: `${HOST}:${inference.grpcPort}`,
    });
    edge.metricsPort = httpPort;

    const running = new Map<string, Supervised>();
    for (const p of plans) {
      const entry = fileURLToPath(import.meta.resolve(p.entry));
      const child = supervisor.start(
        {
          name: p.name,
          command: process.execPath,
          args: [...process.execArgv, entry],
          env: {
            ...options.env,
            NATS_URL: natsUrl,
            NEARHUB_DATA_DIR: dataDir,
            NEARHUB_BIND_HOST: HOST,
            NEARHUB_INTERNAL_KEY: internalKey,
            NEARHUB_ADMIN_TOKEN: adminToken,
            NEARHUB_ANONYMOUS_READ: anonymousRead,
            NEARHUB_GRPC_PORT: String(p.grpcPort),
            NEARHUB_METRICS_PORT: String(p.metricsPort),
            ...p.extraEnv,
          },
          logFile: join(dataDir, "logs", `${p.name}.log`),
        },
        (code, signal) => {
          if (!stopping) {
            process.stderr.write(
              `${p.name} exited (${code ?? signal ?? "unknown"}); see ${join(dataDir, "logs", `${p.name}.log`)}. Stopping.\n`,
            );
            void shutdown(1);
          }
        },
      );
      running.set(p.name, child);
    }

    // 3. Wait until every service reports SERVING on grpc.health.v1.
    const clients = plans.map((p) => ({
      plan: p,
      client: createClient(Health, `${HOST}:${p.grpcPort}`, { maxAttempts: 1 }),
    }));
    const pending = new Set(plans.map((p) => p.name));
    const deadline = Date.now() + options.readyTimeoutS * 1000;
    while (pending.size > 0 && !stopping && Date.now() < deadline) {
      await Promise.all(
        clients
          .filter((c) => pending.has(c.plan.name))
          .map(async ({ plan: p, client }) => {
            try {
              const { status } = await client.check({ service: "" }, { timeoutMs: 500 });
              if (status === HealthCheckResponse_ServingStatus.SERVING) pending.delete(p.name);
            } catch {
              // not up yet
            }
          }),
      );
      if (pending.size > 0) await sleep(150);
    }
    for (const c of clients) c.client.$close();
    if (stopping) return await exit;
    if (pending.size > 0) {
      process.stderr.write(`not ready after ${options.readyTimeoutS}s: ${[...pending].join(", ")}\n`);
      for (const name of pending) {
        process.stderr.write(`--- last lines of ${name}:\n${running.get(name)?.tail.slice(-10).join("\n") ?? ""}\n`);
      }
      await shutdown(1);
      return await exit;
    }

    const lines = [
      "",
      `  edge               http://${HOST}:${httpPort}   (git, Hugging Face API, search, admin; /healthz, /metrics)`,
      ...plans
        .filter((p) => p.name !== "edge")
        .map(
          (p) => `  ${p.name.padEnd(18)} grpc ${HOST}:${p.grpcPort}   metrics http://${HOST}:${p.metricsPort}/metrics`,
        ),
      `  NATS               ${natsUrl}`,
      `  data               ${dataDir} (logs in ${join(dataDir, "logs")})`,
      `  access             admin token in ${join(dataDir, "admin-token")} (the CLI uses it from here; elsewhere set NEARHUB_TOKEN);`,
      `                     ${anonymousRead ? `anonymous read of ${anonymousRead}` : "no anonymous access (--private)"}`,
      "",
      `nearhub ready in ${((Date.now() - started) / 1000).toFixed(1)}s: ${plans.length} services SERVING. Press Ctrl-C to stop.`,
      "",
    ];
    process.stdout.write(lines.join("\n"));
    return await exit;
  } catch (error) {
    process.stderr.write(`nearhub up failed: ${(error as Error).message}\n`);
    await shutdown(1);
    return await exit;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(100);
  }
  return false;
}
