/**
 * Storage throughput. A large blob (BENCH_STORAGE_MIB, 1024 by default; the 1 GiB)
 * uploaded and downloaded over gRPC on the folder backend, beside a raw copy of the same
 * file with fs streams; the same over the S3 protocol, beside the minio client talking to the
 * same S3 server directly (multipart with the same part size and parallelism); and 4 KiB
 * PutBlob + GetBlob operations per second at concurrency 64, beside 4 KiB fs write+read.
 * The storage service runs as its own process (services/storage/src/main.ts, as deployed), so
 * client and service do not share one thread; the baselines and the S3 server run in this
 * process. Everything on loopback, bounded by the sizes and counts below and by
 * BENCH_STORAGE_TIMEOUT_MS (15 minutes by default), after which the bench stops itself.
 * BENCH_STORAGE_ONLY=s3 (or fs) runs one part only.
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
import { downloadBlob, tuneHeapForStreaming, uploadFile } from "@nearhub/storage";
import {
  adminAuth,
  deleteNamespace,
  eventually,
  nats,
  s3,
  serviceEnv,
  tempDir,
  uniqueNamespace,
} from "@nearhub/testing";
import { Client } from "minio";

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
      env: { UV_THREADPOOL_SIZE: "32", ...process.env, ...env, NEARHUB_GRPC_PORT: String(port) },
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
  const s3server = await s3();
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

      const copyMs = await timed(() =>
        pipeline(createReadStream(source), createWriteStream(join(dir.path, "copy.bin"))),
      );
      await rm(join(dir.path, "copy.bin"));
      const up = await timedWithCpu(fsService.child.pid, () =>
        uploadFile(fsClient, source, { sha256, size, chunkSize: CHUNK, parallel: PARALLEL }),
      );
      const upMs = up.ms;
      const down = await timedWithCpu(fsService.child.pid, () =>
        downloadBlob(fsClient, sha256, size, join(dir.path, "down-fs.bin"), { parallel: PARALLEL }),
      );
      const downMs = down.ms;
      await rm(join(dir.path, "down-fs.bin"));
      console.log("folder backend (gRPC, verified) vs fs stream copy of the same file:");
      row("upload", `${mbps(size, upMs).toFixed(0)} MB/s`, `${mbps(size, copyMs).toFixed(0)} MB/s`, copyMs / upMs);
      row(
        "download (verified)",
        `${mbps(size, downMs).toFixed(0)} MB/s`,
        `${mbps(size, copyMs).toFixed(0)} MB/s`,
        copyMs / downMs,
      );
      const perGiB = (cpu: number) => (cpu / (size / 1024 ** 3)).toFixed(2);
      console.log(
        `  storage process CPU: upload ${perGiB(up.cpu)} s/GiB, download ${perGiB(down.cpu)} s/GiB; load ${loadavg()}`,
      );

      // Small objects on the folder backend vs fs write + read of the same bytes.
      const small = Array.from({ length: SMALL_OPS }, () => randomBytes(4096));
      const shas = small.map((b) => createHash("sha256").update(b).digest("hex"));
      const rawDir = join(dir.path, "raw-small");
      await mkdir(rawDir);
      const raw = await rate(async (i) => {
        await writeFile(join(rawDir, shas[i]!), small[i]!);
        await readFile(join(rawDir, shas[i]!));
      });
      const smallCpu = cpuSeconds(fsService.child.pid);
      const ops = await rate(async (i) => {
        await fsClient.putBlob(
          (async function* () {
            yield { part: { case: "header" as const, value: { sha256: shas[i]!, size: 4096n } } };
            yield { part: { case: "chunk" as const, value: small[i]! } };
          })(),
        );
        for await (const m of fsClient.getBlob({ sha256: shas[i]! })) void m;
      });
      console.log("4 KiB PutBlob + GetBlob (one op = both) vs fs writeFile + readFile:");
      row("ops/s", ops.opsPerSec.toFixed(0), raw.opsPerSec.toFixed(0), ops.opsPerSec / raw.opsPerSec);
      console.log(
        `  latency median ${ops.median.toFixed(2)} ms, p99 ${ops.p99.toFixed(2)} ms (baseline ${raw.median.toFixed(2)} / ${raw.p99.toFixed(2)} ms); storage process CPU ${((1000 * (cpuSeconds(fsService.child.pid) - smallCpu)) / SMALL_OPS).toFixed(2)} ms/op; load ${loadavg()}`,
      );
      fsClient.$close();
    }
    if (ONLY === "fs") return;
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
    const url = new URL(s3server.endpoint);
    const minio = new Client({
      endPoint: url.hostname,
      port: Number(url.port),
      useSSL: false,
      accessKey: s3server.accessKey,
      secretKey: s3server.secretKey,
      region: s3server.region,
      pathStyle: true,
    });
    // Direct: the same multipart shape (part size, parallelism) straight from the minio client.
    const directKey = "direct/blob.bin";
    const directUpMs = await timed(async () => {
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
    const directDownMs = await timed(async () => {
      const stream = await minio.getObject(bucket, directKey);
      await pipeline(stream, createWriteStream(join(dir.path, "down-direct.bin")));
    });
    await rm(join(dir.path, "down-direct.bin"));
    const s3UpMs = await timed(() =>
      uploadFile(s3Client, source, { sha256, size, chunkSize: CHUNK, parallel: PARALLEL }),
    );
    const s3DownMs = await timed(() =>
      downloadBlob(s3Client, sha256, size, join(dir.path, "down-s3.bin"), { parallel: PARALLEL }),
    );
    await rm(join(dir.path, "down-s3.bin"));
    console.log(`S3 protocol (${s3server.endpoint}) through storage vs the minio client directly:`);
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
    console.log(`  load ${loadavg()}`);
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
