/**
 * Open-loop unary gRPC load from `h2load` (nghttp2's C HTTP/2 load generator, Debian package
 * `nghttp2-client`), for the bench's latency-at-a-fixed-rate rows. A generator written in Node on
 * the same two cores as the servers adds its own timer bursts, garbage collections and send lag
 * to the tail it measures (about 200 µs of CPU per call, against ~10 µs here); h2load costs a
 * fraction of that and never waits on a JavaScript event loop.
 *
 * h2load speaks plain HTTP/2: it POSTs the 5-byte-prefixed gRPC message with the gRPC headers and
 * sees only the HTTP status (always 200 for gRPC), not `grpc-status` in the trailers. So the
 * caller checks the same request through a real gRPC client first ({@link checkUnary}), and every
 * run checks that the responses carried their message: a gRPC error is a trailers-only response
 * with no DATA, so the mean DATA bytes per response falls below the expected frame.
 */
import { execFile, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { LoadResult } from "./grpc-load.js";

/** One open-loop run. */
export interface H2loadSpec {
  target: string;
  /** `/package.Service/Method`. */
  path: string;
  /** The serialized request message (the gRPC frame is added here). */
  request: Uint8Array;
  metadata?: Record<string, string>;
  /** Requests per second across all connections. */
  rate: number;
  /** Connections, each sending `rate / connections` per second. */
  connections: number;
  warmupMs: number;
  durationMs: number;
  /** The response message's size when the call succeeds (from {@link checkUnary}). */
  responseBytes: number;
  /** CPUs to pin h2load to (`taskset -c`), e.g. "0"; unpinned when absent. */
  cpus?: string | undefined;
}

/** h2load's version line when it is on PATH, else undefined. */
export function h2loadVersion(): string | undefined {
  const probe = spawnSync("h2load", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) return undefined;
  return probe.stdout.trim().split("\n")[0];
}

/**
 * One call through the grpc-js client with the exact bytes h2load will send: fails unless the
 * status is OK; answers the response message's size.
 */
export async function checkUnary(
  target: string,
  path: string,
  request: Uint8Array,
  metadata: Record<string, string> = {},
): Promise<number> {
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  try {
    const response = await new Promise<Buffer>((resolve, reject) =>
      client.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from(request),
        md,
        { deadline: Date.now() + 10_000 },
        (error, value) => (error || !value ? reject(error ?? new Error("no response")) : resolve(value)),
      ),
    );
    return response.byteLength;
  } finally {
    client.close();
  }
}

/** The `--log-file` rows: start (µs since epoch), HTTP status, duration (µs). */
export function parseLog(text: string): { latenciesMs: Float64Array; non2xx: number } {
  const latencies: number[] = [];
  let non2xx = 0;
  for (const line of text.split("\n")) {
    if (!line) continue;
    const [, status, micros] = line.split("\t");
    if (status === undefined || micros === undefined) continue;
    if (!status.startsWith("2")) non2xx++;
    latencies.push(Number(micros) / 1000);
  }
  return { latenciesMs: Float64Array.from(latencies).sort(), non2xx };
}

/** The counts h2load prints: `requests: N total, … N succeeded, N failed, N errored, N timeout` and the DATA bytes. */
export function parseSummary(text: string): { succeeded: number; failed: number; dataBytes: number } {
  const requests = /requests: .*?(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(text);
  const traffic = /traffic: .*?\((\d+)\) data/.exec(text);
  if (!requests || !traffic) throw new Error(`cannot read h2load's summary:\n${text.slice(0, 2000)}`);
  const n = (i: number) => Number(requests[i]);
  return { succeeded: n(1), failed: n(2) + n(3) + n(4), dataBytes: Number(traffic[1]) };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** The CPU time (µs) of the shell's waited-for children, read from its /proc stat (Linux). */
function childrenCpuUs(stat: string): number | undefined {
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After the command name: state is field 3, so cutime (16) and cstime (17) are at 13 and 14.
  const ticks = Number(fields[13]) + Number(fields[14]);
  return Number.isFinite(ticks) ? ticks * 10_000 : undefined; // USER_HZ is 100 on Linux
}

/** Runs h2load open-loop against `spec.target`; latency counts from each request's send. */
export async function runH2load(spec: H2loadSpec): Promise<LoadResult> {
  const dir = await mkdtemp(join(tmpdir(), "nearhub-h2load-"));
  try {
    const frame = Buffer.alloc(5 + spec.request.byteLength);
    frame.writeUInt32BE(spec.request.byteLength, 1);
    frame.set(spec.request, 5);
    const body = join(dir, "request.bin");
    const log = join(dir, "log.tsv");
    await writeFile(body, frame);
    const headers = Object.entries({
      "content-type": "application/grpc",
      te: "trailers",
      ...spec.metadata,
    }).flatMap(([k, v]) => ["-H", `${k}: ${v}`]);
    const args = [
      "-d",
      body,
      ...headers,
      "-c",
      String(spec.connections),
      // Streams per connection: far above what 1,000 req/s at a few ms needs, so a slow answer
      // never holds back the next send (h2load would queue it: closed-loop by the back door).
      "-m",
      "256",
      "--rps",
      String(spec.rate / spec.connections),
      "--warm-up-time",
      `${spec.warmupMs}ms`,
      "-D",
      `${spec.durationMs}ms`,
      `--log-file=${log}`,
      `http://${spec.target}${spec.path}`,
    ];
    // Through a shell, to read h2load's CPU time (its waited-for child time) before the shell exits.
    const script = `${spec.cpus ? 'taskset -c "$H2LOAD_CPUS" ' : ""}h2load "$@"; code=$?; cat /proc/$$/stat >&2; exit $code`;
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
      execFile(
        "sh",
        ["-c", script, "h2load", ...args],
        { maxBuffer: 16 * 1024 * 1024, env: { ...process.env, H2LOAD_CPUS: spec.cpus ?? "" } },
        (error, out, err) =>
          error
            ? reject(new Error(`h2load failed: ${error.message}\n${out}\n${err}`))
            : resolve({ stdout: out, stderr: err }),
      ),
    );
    const summary = parseSummary(stdout);
    const { latenciesMs, non2xx } = parseLog(await readFile(log, "utf8"));
    const seconds = spec.durationMs / 1000;
    const cpuUs = childrenCpuUs(stderr.trim().split("\n").pop() ?? "");
    // h2load counts the DATA bytes of the warm-up's responses too, but only the measured window's
    // requests (the warm-up sends at the same rate), so the expected bytes scale by the whole run;
    // 2% of slack covers the rate's 10 ms ticks at the window's edges.
    const expected = 5 + spec.responseBytes;
    const scale = (spec.warmupMs + spec.durationMs) / spec.durationMs;
    const meanData = summary.succeeded > 0 ? summary.dataBytes / (summary.succeeded * scale) : 0;
    const withoutMessage = meanData < expected * 0.98;
    // Responses without a message, estimated from the shortfall.
    const missing = withoutMessage ? Math.max(1, Math.round(summary.succeeded * (1 - meanData / expected))) : 0;
    const errors = summary.failed + non2xx + missing;
    const firstError =
      summary.failed + non2xx > 0
        ? `h2load: ${summary.failed} failed, ${non2xx} non-2xx`
        : withoutMessage
          ? `responses carried ${meanData.toFixed(1)} DATA bytes on average, expected ${expected}: some were gRPC errors (trailers-only)`
          : undefined;
    return {
      completed: latenciesMs.length,
      errors,
      seconds,
      throughput: latenciesMs.length / seconds,
      p50: percentile(latenciesMs, 50),
      p99: percentile(latenciesMs, 99),
      ...(cpuUs === undefined
        ? {}
        : { generatorCpuUs: cpuUs / Math.max(1, (spec.rate * (spec.warmupMs + spec.durationMs)) / 1000) }),
      ...(firstError ? { firstError } : {}),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
