/**
 * Storage throughput. A large blob (BENCH_STORAGE_MIB, 1024 by default; the 1 GiB)
 * uploaded and downloaded over gRPC on the folder backend, beside a raw copy of the same
 * file with fs streams; the same over the S3 protocol, beside the minio client talking to the
 * same S3 server directly (multipart with the same part size and parallelism); and 4 KiB
 * PutBlob + GetBlob operations per second at concurrency 64, beside 4 KiB fs write+read.
 * The folder-backend figures are also printed beside the same clients talking to bare grpc-js
 * (bench/storage-echo.ts: the same service definition keeping blobs in memory, no hashing, disk
 * or events), which is what the transport alone moves on this machine, and the small-object
 * op is broken down call by call.
 * The storage service runs as its own process (services/storage/src/main.ts, as deployed), so
 * client and service do not share one thread; the baselines and the S3 server run in this
 * process. Everything on loopback, bounded by the sizes and counts below and by
 * BENCH_STORAGE_TIMEOUT_MS (15 minutes by default), after which the bench stops itself.
 * BENCH_STORAGE_ONLY=s3 (or fs, or small: the small objects alone) runs one part only;
 * BENCH_STORAGE_SMALL_OPS sets the number of small operations (5000).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { readFileSync } from "node:fs";
import { mkdir, open, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { pipeline } from "node:stream/promises";
import { createClient } from "@nearhub/platform";
import { StorageService } from "@nearhub/proto/storage";
import {
  downloadBlob,
  streamingMallocEnv,
  tuneHeapForStreaming,
  uploadFile,
  type StorageClient,
} from "@nearhub/storage";
import {
  adminAuth,
  deleteNamespace,
  eventually,
  nats,
  s3Client,
  serviceEnv,
  tempDir,
  uniqueNamespace,
  type S3Access,
} from "@nearhub/testing";
import type { Client } from "minio";
import { BenchChild } from "./bench-child.js";
import type { EchoMessage } from "./storage-echo.js";
import type { S3ServerMessage } from "./s3-server.js";

const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env["BENCH_STORAGE_MIB"] ?? 1024);
const SMALL_OPS = Number(process.env["BENCH_STORAGE_SMALL_OPS"] ?? 5000);
const TIMEOUT_MS = Number(process.env["BENCH_STORAGE_TIMEOUT_MS"] ?? 15 * 60_000);
/** "s3" runs only the S3 part (quick iterations on it); "fs" only the folder backend and small objects. */
const ONLY = process.env["BENCH_STORAGE_ONLY"] ?? "";
const repoRoot = fileURLToPath(new URL("..", import.meta.url));

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The storage service as its own process, answering on the port it returns. */
async function startStorageProcess(env: Record<string, string>): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [
      // Extra node flags for the storage process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
      ...(process.env["BENCH_STORAGE_NODE_ARGS"] ?? "").split(" ").filter(Boolean),
      "--conditions=development",
      "--import",
      "tsx",
      "services/storage/src/main.ts",
    ],
    {
      cwd: repoRoot,
      // Storage's work is fs calls on libuv's thread pool, where an fsync holds a thread for
      // milliseconds: deploy it with a larger pool than the default 4 (read once, at start-up,
      // so it must be in the environment, not set by the process itself).
      env: {
        UV_THREADPOOL_SIZE: "32",
        ...process.env,
        // As `nearhub up` starts it (see streamingMallocEnv).
        GLIBC_TUNABLES: streamingMallocEnv(process.env["GLIBC_TUNABLES"]),
        ...env,
        NEARHUB_GRPC_PORT: String(port),
      },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const probe = createClient(StorageService, `127.0.0.1:${port}`, { timeoutMs: 2_000 });
  try {
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`storage exited: ${stderr}`);
        await probe.hasBlobs({ sha256: [] });
        return true;
      },
      60_000,
      "the storage process to answer",
    );
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  } finally {
    probe.$close();
  }
  return { port, child };
}

/** CPU seconds (user + system) a process has used so far, from /proc; NaN where there is none. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

function loadavg(): string {
  try {
    return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

/** Runs `fn`; its wall time and the CPU seconds `pid` used meanwhile. */
async function timedWithCpu(pid: number | undefined, fn: () => Promise<unknown>): Promise<{ ms: number; cpu: number }> {
  const before = cpuSeconds(pid);
  const ms = await timed(fn);
  return { ms, cpu: cpuSeconds(pid) - before };
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}
const CONCURRENCY = 64;
const CHUNK = 64 * MiB;
const PARALLEL = 4;

function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Runs `op` SMALL_OPS times at CONCURRENCY; ops/s, median and p99 latency (ms). */
async function rate(op: (i: number) => Promise<void>): Promise<{ opsPerSec: number; median: number; p99: number }> {
  const latencies: number[] = [];
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < SMALL_OPS; i = next++) {
        const s = performance.now();
        await op(i);
        latencies.push(performance.now() - s);
      }
    }),
  );
  const ms = performance.now() - t;
  latencies.sort((a, b) => a - b);
  return { opsPerSec: (SMALL_OPS / ms) * 1000, median: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

/** The S3 server, in a process of its own (bench/s3-server.ts). */
async function s3ServerProcess(): Promise<
  S3Access & { admin: Client; createBucket(): Promise<string>; stop(): Promise<void> }
> {
  const child = await BenchChild.fork<{ type: "stop" }, S3ServerMessage>("the S3 server", "s3-server.ts", {});
  const ready = child.first;
  if (ready.type !== "ready") throw new Error("the S3 server did not start");
  const admin = await s3Client(ready);
  return {
    ...ready,
    admin,
    async createBucket() {
      const name = `nearhub-bench-${randomBytes(5).toString("hex")}`;
      await admin.makeBucket(name, ready.region);
      return name;
    },
    stop: () => child.stop({ type: "stop" }, "stopped"),
  };
}

async function putSmall(client: StorageClient, sha256: string, bytes: Uint8Array): Promise<void> {
  await client.putBlob(
    (async function* () {
      yield { part: { case: "header" as const, value: { sha256, size: BigInt(bytes.byteLength) } } };
      yield { part: { case: "chunk" as const, value: bytes } };
    })(),
  );
}

async function getSmall(client: StorageClient, sha256: string): Promise<void> {
  for await (const m of client.getBlob({ sha256 })) void m;
}

function row(label: string, value: string, baseline: string, ratio: number): void {
  console.log(
    `  ${label.padEnd(34)} ${value.padStart(14)}   baseline ${baseline.padStart(14)}   ratio ${ratio.toFixed(2)}`,
  );
}

export async function main(): Promise<void> {
  // This process is the client, tuned as `nearhub upload` and `download` are.
  tuneHeapForStreaming();
  const natsUrl = (await nats()).url;
  const dir = await tempDir("nearhub-bench-storage-");
  const size = SIZE_MIB * MiB;
  console.log(
    `storage: ${SIZE_MIB} MiB blob, ${CHUNK / MiB} MiB chunks x ${PARALLEL} in parallel; ${SMALL_OPS} x 4 KiB ops at concurrency ${CONCURRENCY}; load ${loadavg()}`,
  );
  const source = join(dir.path, "blob.bin");
  const file = await open(source, "w");
  const hash = createHash("sha256");
  for (let i = 0; i < SIZE_MIB; i += 16) {
    const block = randomBytes(16 * MiB);
    hash.update(block);
    await file.write(block);
  }
  await file.close();
  const sha256 = hash.digest("hex");
  const children: ChildProcess[] = [];
  const namespaces: string[] = [];
  const s3server = await s3ServerProcess();
  // Bounded: whatever hangs, the bench ends.
  const deadline = setTimeout(() => {
    console.error(`storage bench: over ${TIMEOUT_MS} ms (BENCH_STORAGE_TIMEOUT_MS); stopping`);
    for (const c of children) c.kill("SIGKILL");
    process.exit(1);
  }, TIMEOUT_MS);
  deadline.unref();
  try {
    if (ONLY !== "s3") {
      // Folder backend.
      const fsNs = uniqueNamespace("bench");
      namespaces.push(fsNs);
      const fsService = await startStorageProcess(
        serviceEnv(natsUrl, fsNs, join(dir.path, "fs"), { NEARHUB_BLOB_BACKEND: "fs" }),
      );
      children.push(fsService.child);
      const fsClient = createClient(StorageService, `127.0.0.1:${fsService.port}`, {
        metadata: adminAuth(fsNs),
        maxMessageBytes: 16 * MiB,
        timeoutMs: 600_000,
      });

      // The transport baseline: the same clients against bare grpc-js keeping blobs in memory.
      const echo = await BenchChild.fork<{ type: "stop" }, EchoMessage>("storage echo", "storage-echo.ts", {
        // The storage process's malloc settings, so the two servers differ only in their code.
        env: { STORAGE_ECHO_PRELOAD: source, GLIBC_TUNABLES: streamingMallocEnv(process.env["GLIBC_TUNABLES"]) },
      });
      if (echo.first.type !== "ready") throw new Error("the storage echo did not start");
      const echoPid = echo.child.pid;
      const echoClient = createClient(StorageService, `127.0.0.1:${echo.first.port}`, {
        maxMessageBytes: 16 * MiB,
        timeoutMs: 600_000,
      });
      try {
        if (ONLY !== "small") {
          const copyMs = await timed(() =>
            pipeline(createReadStream(source), createWriteStream(join(dir.path, "copy.bin"))),
          );
          await rm(join(dir.path, "copy.bin"));
          const upload = (client: StorageClient, pid: number | undefined) =>
            timedWithCpu(pid, () => uploadFile(client, source, { sha256, size, chunkSize: CHUNK, parallel: PARALLEL }));
          const download = async (client: StorageClient, pid: number | undefined) => {
            const t = await timedWithCpu(pid, () =>
              downloadBlob(client, sha256, size, join(dir.path, "down.bin"), { parallel: PARALLEL }),
            );
            await rm(join(dir.path, "down.bin"));
            return t;
          };
          const up = await upload(fsClient, fsService.child.pid);
          const down = await download(fsClient, fsService.child.pid);
          const echoUp = await upload(echoClient, echoPid);
          const echoDown = await download(echoClient, echoPid);
          console.log("folder backend (gRPC, verified) vs fs stream copy of the same file:");
          row(
            "upload",
            `${mbps(size, up.ms).toFixed(0)} MB/s`,
            `${mbps(size, copyMs).toFixed(0)} MB/s`,
            copyMs / up.ms,
          );
          row(
            "download (verified)",
            `${mbps(size, down.ms).toFixed(0)} MB/s`,
            `${mbps(size, copyMs).toFixed(0)} MB/s`,
            copyMs / down.ms,
          );
          console.log("  the same vs the same client and bare grpc-js keeping the blob in memory (transport alone):");
          row(
            "upload",
            `${mbps(size, up.ms).toFixed(0)} MB/s`,
            `${mbps(size, echoUp.ms).toFixed(0)} MB/s`,
            echoUp.ms / up.ms,
          );
          row(
            "download",
            `${mbps(size, down.ms).toFixed(0)} MB/s`,
            `${mbps(size, echoDown.ms).toFixed(0)} MB/s`,
            echoDown.ms / down.ms,
          );
          const perGiB = (cpu: number) => (cpu / (size / 1024 ** 3)).toFixed(2);
          console.log(
            `  server CPU: storage upload ${perGiB(up.cpu)} s/GiB, download ${perGiB(down.cpu)} s/GiB; bare grpc-js ${perGiB(echoUp.cpu)} / ${perGiB(echoDown.cpu)} s/GiB; load ${loadavg()}`,
          );
        }

        // Small objects on the folder backend vs fs write + read of the same bytes, and vs the
        // same calls to bare grpc-js.
        const small = Array.from({ length: SMALL_OPS }, () => randomBytes(4096));
        const shas = small.map((b) => createHash("sha256").update(b).digest("hex"));
        const rawDir = join(dir.path, "raw-small");
        await mkdir(rawDir);
        const raw = await rate(async (i) => {
          await writeFile(join(rawDir, shas[i]!), small[i]!);
          await readFile(join(rawDir, shas[i]!));
        });
        const measured = async (pid: number | undefined, op: (i: number) => Promise<void>) => {
          const before = cpuSeconds(pid);
          const r = await rate(op);
          return { ...r, cpuMs: (1000 * (cpuSeconds(pid) - before)) / SMALL_OPS };
        };
        const smallOp = (client: StorageClient) => async (i: number) => {
          await putSmall(client, shas[i]!, small[i]!);
          await getSmall(client, shas[i]!);
        };
        // Unmeasured first: both servers (and this client) run the op's code hot, not its first
        // compilation, in the rows below. Blobs of their own, so the measured puts are new.
        const warm = Array.from({ length: Math.min(SMALL_OPS, 1000) }, () => randomBytes(4096));
        const warmShas = warm.map((b) => createHash("sha256").update(b).digest("hex"));
        for (const client of [fsClient, echoClient]) {
          await rate(async (i) => {
            if (i >= warm.length) return;
            await putSmall(client, warmShas[i]!, warm[i]!);
            await getSmall(client, warmShas[i]!);
          });
        }
        const ops = await measured(fsService.child.pid, smallOp(fsClient));
        const echoOps = await measured(echoPid, smallOp(echoClient));
        console.log("4 KiB PutBlob + GetBlob (one op = both) vs fs writeFile + readFile, and vs bare grpc-js:");
        row("ops/s", ops.opsPerSec.toFixed(0), raw.opsPerSec.toFixed(0), ops.opsPerSec / raw.opsPerSec);
        row("ops/s", ops.opsPerSec.toFixed(0), echoOps.opsPerSec.toFixed(0), ops.opsPerSec / echoOps.opsPerSec);
        console.log(
          `  latency median ${ops.median.toFixed(2)} ms, p99 ${ops.p99.toFixed(2)} ms (fs ${raw.median.toFixed(2)} / ${raw.p99.toFixed(2)} ms, bare grpc-js ${echoOps.median.toFixed(2)} / ${echoOps.p99.toFixed(2)} ms); server CPU ${ops.cpuMs.toFixed(3)} ms/op (bare grpc-js ${echoOps.cpuMs.toFixed(3)}); load ${loadavg()}`,
        );
        const fresh = Array.from({ length: SMALL_OPS }, () => randomBytes(4096));
        const freshShas = fresh.map((b) => createHash("sha256").update(b).digest("hex"));
        console.log("  where an op's time goes (each call alone, same concurrency):");
        const parts: Array<[string, (i: number) => Promise<void>]> = [
          ["PutBlob, new", (i) => putSmall(fsClient, freshShas[i]!, fresh[i]!)],
          ["PutBlob, already stored", (i) => putSmall(fsClient, shas[i]!, small[i]!)],
          ["GetBlob", (i) => getSmall(fsClient, shas[i]!)],
          ["empty call (HasBlobs [])", async () => void (await fsClient.hasBlobs({ sha256: [] }))],
        ];
        for (const [label, op] of parts) {
          const r = await measured(fsService.child.pid, op);
          console.log(
            `  ${label.padEnd(28)} ${r.opsPerSec.toFixed(0).padStart(7)} /s  median ${r.median.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  server CPU ${r.cpuMs.toFixed(3)} ms/call`,
          );
        }
      } finally {
        echoClient.$close();
        fsClient.$close();
        await echo.stop({ type: "stop" }, "stopped");
      }
    }
    if (ONLY === "fs" || ONLY === "small") return;
    // S3 protocol: the service vs the minio client on the same server.
    const bucket = await s3server.createBucket();
    const s3Ns = uniqueNamespace("bench");
    namespaces.push(s3Ns);
    const s3Service = await startStorageProcess(
      serviceEnv(natsUrl, s3Ns, join(dir.path, "s3"), {
        NEARHUB_BLOB_BACKEND: "s3",
        NEARHUB_S3_ENDPOINT: s3server.endpoint,
        NEARHUB_S3_BUCKET: bucket,
        NEARHUB_S3_ACCESS_KEY: s3server.accessKey,
        NEARHUB_S3_SECRET_KEY: s3server.secretKey,
      }),
    );
    children.push(s3Service.child);
    const s3Client = createClient(StorageService, `127.0.0.1:${s3Service.port}`, {
      metadata: adminAuth(s3Ns),
      maxMessageBytes: 16 * MiB,
      timeoutMs: 600_000,
    });
    const minio = s3server.admin;
    // Direct: the same multipart shape (part size, parallelism) straight from the minio client.
    const directKey = "direct/blob.bin";
    const direct = async () => {
      const up = await timed(async () => {
        const uploadId = await minio.initiateNewMultipartUpload(bucket, directKey, {});
        const handle = await open(source, "r");
        const parts: Array<{ part: number; etag: string }> = [];
        const todo = Array.from({ length: Math.ceil(size / CHUNK) }, (_, i) => i);
        await Promise.all(
          Array.from({ length: PARALLEL }, async () => {
            for (let i = todo.shift(); i !== undefined; i = todo.shift()) {
              const length = Math.min(CHUNK, size - i * CHUNK);
              const buffer = Buffer.allocUnsafe(length);
              await handle.read(buffer, 0, length, i * CHUNK);
              const { etag } = await minio.uploadPart(
                {
                  bucketName: bucket,
                  objectName: directKey,
                  uploadID: uploadId,
                  partNumber: i + 1,
                  headers: { "Content-Length": String(length) },
                },
                buffer,
              );
              parts.push({ part: i + 1, etag });
            }
          }),
        );
        await handle.close();
        await minio.completeMultipartUpload(
          bucket,
          directKey,
          uploadId,
          parts.sort((a, b) => a.part - b.part),
        );
      });
      const down = await timed(async () => {
        const stream = await minio.getObject(bucket, directKey);
        await pipeline(stream, createWriteStream(join(dir.path, "down-direct.bin")));
      });
      await rm(join(dir.path, "down-direct.bin"));
      await minio.removeObject(bucket, directKey);
      return { up, down };
    };
    // The service keeps the blob under its sha256 (s3-blob-store.ts's layout); removed after each
    // run, so the next one uploads it again into a server holding as much as before.
    const blobKey = `sha256/${sha256.slice(0, 2)}/${sha256.slice(2, 4)}/${sha256}`;
    const service = async () => {
      const up = await timed(() =>
        uploadFile(s3Client, source, { sha256, size, chunkSize: CHUNK, parallel: PARALLEL }),
      );
      const down = await timed(() =>
        downloadBlob(s3Client, sha256, size, join(dir.path, "down-s3.bin"), { parallel: PARALLEL }),
      );
      await rm(join(dir.path, "down-s3.bin"));
      await minio.removeObject(bucket, blobKey);
      return { up, down };
    };
    // A, B, B, A: an S3 server slows as it fills and warms, so each side gets an early and a
    // late turn, and the ratio is of the totals.
    const runs = { direct: [await direct()], service: [await service()] };
    runs.service.push(await service());
    runs.direct.push(await direct());
    const total = (r: Array<{ up: number; down: number }>, k: "up" | "down") => r.reduce((n, x) => n + x[k], 0);
    const directUpMs = total(runs.direct, "up") / 2;
    const directDownMs = total(runs.direct, "down") / 2;
    const s3UpMs = total(runs.service, "up") / 2;
    const s3DownMs = total(runs.service, "down") / 2;
    console.log(
      `S3 protocol (${s3server.endpoint}, its own process) through storage vs the minio client directly (mean of 2 runs each, A B B A):`,
    );
    row(
      "upload (verified, committed)",
      `${mbps(size, s3UpMs).toFixed(0)} MB/s`,
      `${mbps(size, directUpMs).toFixed(0)} MB/s`,
      directUpMs / s3UpMs,
    );
    row(
      "download (verified)",
      `${mbps(size, s3DownMs).toFixed(0)} MB/s`,
      `${mbps(size, directDownMs).toFixed(0)} MB/s`,
      directDownMs / s3DownMs,
    );
    const each = (r: Array<{ up: number; down: number }>) =>
      r.map((x) => `${mbps(size, x.up).toFixed(0)}/${mbps(size, x.down).toFixed(0)}`).join(", ");
    console.log(
      `  runs, upload/download MB/s: storage ${each(runs.service)}; minio client ${each(runs.direct)}; load ${loadavg()}`,
    );
    s3Client.$close();
  } finally {
    clearTimeout(deadline);
    for (const c of children) await stopProcess(c);
    for (const ns of namespaces) await deleteNamespace(natsUrl, ns);
    await s3server.stop();
    await dir.cleanup();
  }
}

if (import.meta.url === `file://${process.argv[1] ?? ""}`) await main();
