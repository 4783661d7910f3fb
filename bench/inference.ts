/**
 * The inference gateway on a tiny MLP (64 → 256 → 10, FP32) over loopback, beside two
 * baselines measured in the same script: the model run in-process with onnxruntime-node (the
 * compute floor) and a bare grpc-js server that decodes the same ModelInferRequest and answers
 * a response of the same size (the floor gRPC itself sets on this machine). Prints throughput
 * and p50/p99 at concurrency 1, 8, 64 and 256, unary and streaming, with and without dynamic
 * batching; the p99 at 1,000 requests/s offered open-loop; the first-load time; and the
 * ratios against the targets. Load comes from bench/grpc-load.ts in a child process (the open-loop
 * rows from h2load when it is on PATH, see bench/h2load.ts); the gateway
 * and the echo run together in another (bench/inference-servers.ts), with the same V8 flags, after
 * an unmeasured warm-up of every path.
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { mlpModel, seededFloats } from "@nearhub/inference-gateway";
import * as ort from "onnxruntime-node";
import { BenchChild } from "./bench-child.js";
import type { LoadResult, LoadSpec } from "./grpc-load.js";
import { checkUnary, h2loadVersion, runH2load } from "./h2load.js";
import {
  SERVER_NODE_FLAGS,
  SERVER_ONLY_FLAGS,
  benchRequest,
  type ServersMessage,
  type ServersRequest,
} from "./inference-servers.js";

const DURATION_MS = Number(process.env["BENCH_DURATION_MS"] ?? 1500);
const WARMUP_MS = 300;
/** Each path's unmeasured run before the first measured point (JIT warm-up). */
const WARMUP_RUN_MS = Number(process.env["BENCH_WARMUP_RUN_MS"] ?? 1500);
/** The closed-loop concurrencies; `BENCH_CONCURRENCY=64,256` measures only those. */
const CONCURRENCY = (process.env["BENCH_CONCURRENCY"] || "1,8,64,256").split(",").map(Number);
/**
 * Only the sections whose label contains one of these `;`-separated strings (labels hold commas),
 * e.g. `BENCH_SECTIONS="unary, no batching"`; by default every section. A filter skips the stream
 * echo and the open-loop rows.
 */
const SECTIONS = (process.env["BENCH_SECTIONS"] || "").split(";").filter((s) => s.length > 0);
/** Extra node flags for the servers' process (e.g. `--trace-gc`), space-separated. */
const EXTRA_SERVER_FLAGS = (process.env["BENCH_SERVER_FLAGS"] || "").split(" ").filter((s) => s.length > 0);
/**
 * The open-loop rows' generator: `h2load`, `node` (bench/grpc-load.ts), `both` (h2load's rows, then
 * the Node generator's, for comparison), or by default h2load when on PATH.
 */
const OPEN_LOOP_GENERATOR = process.env["BENCH_OPEN_LOOP_GENERATOR"] ?? "auto";
if (!["auto", "h2load", "node", "both"].includes(OPEN_LOOP_GENERATOR)) {
  throw new Error(`BENCH_OPEN_LOOP_GENERATOR=${OPEN_LOOP_GENERATOR}: use auto, h2load, node or both`);
}
/** h2load's connections for the open-loop rows (each sends 1,000 / N requests per second). */
const H2LOAD_CONNECTIONS = Number(process.env["BENCH_H2LOAD_CONNECTIONS"] ?? 10);
/** CPUs to pin h2load to (`taskset -c`, e.g. "0"); by default the scheduler places it. */
const H2LOAD_CPUS = process.env["BENCH_H2LOAD_CPUS"] || undefined;

function fmt(n: number, digits = 0): string {
  return Number.isFinite(n) ? n.toFixed(digits) : "-";
}

class LoadGenerator {
  private constructor(
    private readonly child: ChildProcess,
    /** Sent with every call (the gateway's and the echo's alike, so the bytes match). */
    private readonly metadata: Record<string, string>,
  ) {}

  static async start(metadata: Record<string, string>): Promise<LoadGenerator> {
    const child = fork(fileURLToPath(new URL("./grpc-load.ts", import.meta.url)), [], {
      execArgv: [...SERVER_NODE_FLAGS, "--conditions=development", "--import", "tsx"],
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    await new Promise<void>((resolve, reject) => {
      child.once("message", () => resolve());
      child.once("exit", (code) => reject(new Error(`load generator exited with ${String(code)}`)));
    });
    return new LoadGenerator(child, metadata);
  }

  run(
    spec: Omit<LoadSpec, "durationMs" | "warmupMs"> & { durationMs?: number; warmupMs?: number },
  ): Promise<LoadResult> {
    return new Promise((resolve, reject) => {
      this.child.once("message", (m: LoadResult | { error: string }) =>
        "error" in m ? reject(new Error(m.error)) : resolve(m),
      );
      this.child.send({
        durationMs: DURATION_MS,
        warmupMs: WARMUP_MS,
        metadata: this.metadata,
        ...spec,
        request: Array.from(spec.request),
      });
    });
  }

  stop(): void {
    this.child.kill();
  }
}

/** A load result with the servers' CPU per call (µs) over the same window. */
type Measured = LoadResult & { serverCpuUs?: number };

function row(label: string, r: Measured, unit = "req/s", itemsPerRequest = 1): string {
  const items = itemsPerRequest > 1 ? `  (${fmt(r.throughput * itemsPerRequest)} inferences/s)` : "";
  const errors = r.errors > 0 ? `  errors ${r.errors}: ${r.firstError ?? ""}` : "";
  const server = r.serverCpuUs === undefined ? "" : ` [server ${fmt(r.serverCpuUs)} µs/call]`;
  const generator = r.generatorCpuUs === undefined ? server : `  [generator ${fmt(r.generatorCpuUs)} µs/call]${server}`;
  return `  ${label.padEnd(34)} ${fmt(r.throughput).padStart(7)} ${unit}  p50 ${fmt(r.p50, 2).padStart(6)} ms  p99 ${fmt(r.p99, 2).padStart(7)} ms${items}${generator}${errors}`;
}

/** The model in-process: sequential batch-1 runs and batch-64 runs. */
async function inProcess(model: Uint8Array): Promise<{ single: LoadResult; batched: LoadResult }> {
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const measure = async (rows: number): Promise<LoadResult> => {
    const feed = { input: new ort.Tensor("float32", seededFloats(rows * 64, 3), [rows, 64]) };
    const warmEnd = performance.now() + WARMUP_MS;
    while (performance.now() < warmEnd) await session.run(feed);
    const samples: number[] = [];
    const end = performance.now() + DURATION_MS;
    while (performance.now() < end) {
      const t = performance.now();
      await session.run(feed);
      samples.push(performance.now() - t);
    }
    samples.sort((a, b) => a - b);
    return {
      completed: samples.length,
      errors: 0,
      seconds: DURATION_MS / 1000,
      throughput: samples.length / (DURATION_MS / 1000),
      p50: samples[Math.floor(samples.length / 2)] ?? NaN,
      p99: samples[Math.floor(samples.length * 0.99)] ?? NaN,
    };
  };
  const single = await measure(1);
  const batched = await measure(64);
  await session.release();
  return { single, batched };
}

/** The servers' process (bench/inference-servers.ts): the gateway and the echo floor. */
class Servers {
  private constructor(
    private readonly process: BenchChild<ServersRequest, ServersMessage>,
    readonly ready: Extract<ServersMessage, { type: "ready" }>,
  ) {}

  static async start(): Promise<Servers | string> {
    const child = await BenchChild.fork<ServersRequest, ServersMessage>("inference servers", "inference-servers.ts", {
      nodeFlags: [...SERVER_NODE_FLAGS, ...SERVER_ONLY_FLAGS, ...EXTRA_SERVER_FLAGS],
      env: { NEARHUB_BENCH_SERVERS: "1" },
    });
    const first = child.first;
    if (first.type === "ready") return new Servers(child, first);
    child.kill();
    return first.type === "skip" ? first.reason : `unexpected ${first.type}`;
  }

  private request(message: ServersRequest, answer?: ServersMessage["type"]): Promise<ServersMessage | undefined> {
    return this.process.request(message, answer);
  }

  /** Starts recording the servers' event-loop delay. */
  async loopStart(): Promise<void> {
    await this.request({ type: "loop-start" });
  }

  /** The servers' event-loop delay p99 (ms) and CPU time (µs) since {@link loopStart}. */
  async loopStop(): Promise<{ p99: number; cpuUs: number }> {
    const m = await this.request({ type: "loop-stop" }, "loop");
    return m?.type === "loop" ? m : { p99: NaN, cpuUs: NaN };
  }

  /**
   * A closed-loop run with the servers' CPU per completed call over its measured window (all
   * threads of their process): unlike throughput, it hardly moves when other work shares the cores.
   */
  async measure(load: LoadGenerator, spec: Parameters<LoadGenerator["run"]>[0]): Promise<Measured> {
    // The points before left their promoted garbage in the old generation (it grows ~4 MB/s
    // under load); collected now, not mid-window. Without it the full collection fell in the
    // same point of every run (unary, no batching, c=256: --trace-gc showed Mark-Compact
    // 113 → 34 MB pausing 217 ms, which made that row's p99 277–327 ms and its CPU per call 1.5×).
    await this.collect();
    const enable = setTimeout(() => void this.loopStart(), spec.warmupMs ?? WARMUP_MS);
    const r = await load.run(spec);
    clearTimeout(enable);
    const { cpuUs } = await this.loopStop();
    return { ...r, serverCpuUs: cpuUs / Math.max(1, r.completed) };
  }

  /** A full garbage collection in the servers' process, before a latency point. */
  async collect(): Promise<void> {
    await this.request({ type: "gc" }, "collected");
  }

  stop(): Promise<void> {
    return this.process.stop({ type: "stop" }, "stopped");
  }
}

export async function main(): Promise<void> {
  const servers = await Servers.start();
  if (typeof servers === "string") {
    console.log(`inference: skipped (${servers})`);
    return;
  }
  const { target, echoTarget, metadata, firstLoadMs } = servers.ready;
  const model = mlpModel(64, 256, 10);
  const load = await LoadGenerator.start(metadata).catch(async (error: unknown) => {
    await servers.stop();
    throw error;
  });
  try {
    const request = (modelName: string) => benchRequest(modelName);

    console.log(`inference: tiny MLP 64→256→10 FP32, loopback, ${DURATION_MS} ms per point, 2-core box shared`);
    console.log(`  first-load time (lazy load on first request, local folder): ${fmt(firstLoadMs, 1)} ms`);

    const floor = await inProcess(model);
    console.log("in-process onnxruntime-node (compute floor):");
    console.log(row("batch 1, sequential", floor.single, "run/s"));
    console.log(row("batch 64, sequential", floor.batched, "run/s", 64));

    const unaryPath = "/inference.GRPCInferenceService/ModelInfer";
    const streamPath = "/inference.GRPCInferenceService/ModelStreamInfer";
    // Warm-up, not measured: a fresh process runs its first seconds of calls at a fraction of
    // its steady speed while V8 compiles the hot paths (measured: a bare echo at c=64 went
    // 343 → 598 → 1447 calls/s over three back-to-back 3 s runs). Every path measured below —
    // the generator's, the echo's and the gateway's — runs first, so no point pays for it.
    for (const [to, path, kind, name, concurrency] of [
      [echoTarget, unaryPath, "unary", "mlp", 64],
      [target, unaryPath, "unary", "mlp", 64],
      [target, unaryPath, "unary", "mlp_batched", 64],
      [echoTarget, streamPath, "stream", "mlp", 64],
      [target, streamPath, "stream", "mlp", 64],
      [target, streamPath, "stream", "mlp_batched", 64],
      [target, unaryPath, "unary", "mlp", 1],
    ] as const) {
      await load.run({
        target: to,
        path,
        kind,
        request: request(name),
        concurrency,
        warmupMs: 0,
        durationMs: WARMUP_RUN_MS,
      });
    }
    // Unary points are measured interleaved (echo, then the gateway, per concurrency), so a
    // change in the machine's load hits the floor and the gateway alike; printed by section.
    const echoUnary = new Map<number, Measured>();
    const results: Record<string, Map<number, Measured>> = {};
    const sections = (
      [
        ["gateway unary, no batching", "mlp", "unary"],
        ["gateway unary, dynamic batching", "mlp_batched", "unary"],
        ["gateway stream, no batching", "mlp", "stream"],
        ["gateway stream, dynamic batching", "mlp_batched", "stream"],
      ] as const
    ).filter(([label]) => SECTIONS.length === 0 || SECTIONS.some((s) => label.includes(s)));
    for (const [label] of sections) results[label] = new Map();
    for (const c of CONCURRENCY) {
      echoUnary.set(
        c,
        await servers.measure(load, {
          target: echoTarget,
          path: unaryPath,
          kind: "unary",
          request: request("mlp"),
          concurrency: c,
        }),
      );
      for (const [label, name, kind] of sections) {
        if (kind !== "unary") continue;
        results[label]?.set(
          c,
          await servers.measure(load, { target, path: unaryPath, kind, request: request(name), concurrency: c }),
        );
      }
    }
    const echoStream =
      SECTIONS.length > 0
        ? undefined
        : await servers.measure(load, {
            target: echoTarget,
            path: streamPath,
            kind: "stream",
            request: request("mlp"),
            concurrency: 64,
          });
    for (const [label, name, kind] of sections) {
      if (kind !== "stream") continue;
      for (const c of CONCURRENCY) {
        results[label]?.set(
          c,
          await servers.measure(load, { target, path: streamPath, kind, request: request(name), concurrency: c }),
        );
      }
    }

    console.log("bare grpc-js echo (same request decode, same response size):");
    for (const [c, r] of echoUnary) console.log(row(`unary c=${c}`, r));
    if (echoStream) console.log(row("stream c=64", echoStream));
    for (const [label, , kind] of sections) {
      console.log(`${label}:`);
      for (const [c, r] of results[label] ?? []) {
        const ratio = kind === "unary" ? `  ${fmt(r.throughput / (echoUnary.get(c)?.throughput ?? NaN), 2)}× echo` : "";
        console.log(row(`c=${c}`, r) + ratio);
      }
    }

    // The open-loop rows come from h2load when it is on PATH (a C generator: its own send lag and
    // garbage do not land in the tail it measures), else from the Node generator; the echo and
    // the gateway always get the same one, so their p99s compare. `both` runs the two in turn.
    const h2load = OPEN_LOOP_GENERATOR === "node" ? undefined : h2loadVersion();
    if ((OPEN_LOOP_GENERATOR === "h2load" || OPEN_LOOP_GENERATOR === "both") && !h2load) {
      throw new Error(
        `BENCH_OPEN_LOOP_GENERATOR=${OPEN_LOOP_GENERATOR}, but h2load is not on PATH: apt-get install nghttp2-client`,
      );
    }
    const generators: Array<"h2load" | "node"> =
      SECTIONS.length > 0 ? [] : OPEN_LOOP_GENERATOR === "both" ? ["h2load", "node"] : h2load ? ["h2load"] : ["node"];
    /** The first generator's rows, which the targets quote. */
    const open: Record<string, LoadResult> = {};
    for (const generator of generators) {
      console.log(
        generator === "h2load"
          ? `open loop, 1,000 requests/s offered by ${h2load ?? "h2load"} (${H2LOAD_CONNECTIONS} connections × ${fmt(1000 / H2LOAD_CONNECTIONS)} req/s, sent in 10 ms ticks${H2LOAD_CPUS ? `, pinned to CPU ${H2LOAD_CPUS}` : ""}; latency from the send; a full GC in the servers' process before each point; event-loop delay p99 of the server's process):`
          : "open loop, 1,000 requests/s offered by the Node generator, bench/grpc-load.ts (latency from the scheduled send time; a full GC in the servers' process before each point; event-loop delay p99 of the generator and of the server's process):",
      );
      for (const [label, name, to] of [
        ["bare grpc-js echo", "mlp", echoTarget],
        ["mlp (no batching)", "mlp", target],
        ["mlp_batched", "mlp_batched", target],
      ] as const) {
        // The closed-loop points before left garbage behind; it is collected now, not mid-window.
        await servers.collect();
        const enable = setTimeout(() => void servers.loopStart(), 1000);
        let r: LoadResult;
        if (generator === "h2load") {
          // h2load sees HTTP statuses only: the same bytes go through a real gRPC client first
          // (status OK, and the response size the run then checks every response against).
          const responseBytes = await checkUnary(to, unaryPath, request(name), metadata);
          r = await runH2load({
            target: to,
            path: unaryPath,
            request: request(name),
            metadata,
            rate: 1000,
            connections: H2LOAD_CONNECTIONS,
            warmupMs: 1000,
            durationMs: 3000,
            responseBytes,
            cpus: H2LOAD_CPUS,
          });
        } else {
          r = await load.run({
            target: to,
            path: unaryPath,
            kind: "unary",
            request: request(name),
            concurrency: 0,
            rate: 1000,
            // A longer warm-up at the offered rate lets the previous point's backlog go.
            warmupMs: 1000,
            durationMs: 3000,
          });
        }
        clearTimeout(enable);
        const serverLoopP99 = (await servers.loopStop()).p99;
        if (generator === generators[0]) open[label] = r;
        console.log(
          generator === "h2load"
            ? `${row(label, r)}  loop delay p99 server ${fmt(serverLoopP99, 1)} ms`
            : `${row(label, r)}  send lag p99 ${fmt(r.sendLagP99 ?? NaN, 2)} ms, p99 from the actual send ${fmt(r.p99FromSend ?? NaN, 2)} ms,  loop delay p99 generator ${fmt(r.generatorLoopDelayP99 ?? NaN, 1)} ms, server ${fmt(serverLoopP99, 1)} ms`,
        );
      }
    }

    const bestUnary = Math.max(
      ...[
        ...(results["gateway unary, no batching"]?.values() ?? []),
        ...(results["gateway unary, dynamic batching"]?.values() ?? []),
      ].map((r) => r.throughput),
    );
    const bestEcho = Math.max(...[...echoUnary.values()].map((r) => r.throughput));
    const bestStream = Math.max(
      ...[...(results["gateway stream, dynamic batching"]?.values() ?? [])].map((r) => r.throughput),
    );
    console.log("targets:");
    console.log(
      `  unary throughput vs echo floor: ${fmt(bestUnary)} / ${fmt(bestEcho)} = ${fmt(bestUnary / bestEcho, 2)} (target ≥ 0.80)`,
    );
    // The throughput ratio moves with whatever else runs on the two cores; the CPU each call
    // costs the servers' process hardly does, so it is printed beside it.
    const cpuAt64 = (r: Measured | undefined) => r?.serverCpuUs ?? NaN;
    const echoCpu = cpuAt64(echoUnary.get(64));
    const gatewayCpu = Math.min(
      cpuAt64(results["gateway unary, no batching"]?.get(64)),
      cpuAt64(results["gateway unary, dynamic batching"]?.get(64)),
    );
    console.log(
      `  server CPU per unary call at c=64: echo ${fmt(echoCpu)} µs, gateway ${fmt(gatewayCpu)} µs (the better model), echo ÷ gateway = ${fmt(echoCpu / gatewayCpu, 2)}`,
    );
    console.log(
      `  p99 at 1,000 req/s open loop (${generators[0] === "h2load" ? "h2load" : "Node generator"}): ${fmt(open["mlp (no batching)"]?.p99 ?? NaN, 2)} ms unbatched, ${fmt(open["mlp_batched"]?.p99 ?? NaN, 2)} ms batched, ${fmt(open["bare grpc-js echo"]?.p99 ?? NaN, 2)} ms echo (target ≤ 10 ms)`,
    );
    console.log(`  streaming with batching: ${fmt(bestStream)} inferences/s (target ≥ 8,000)`);
    console.log(`  gateway vs in-process compute floor (batch 1): ${fmt(bestUnary / floor.single.throughput, 2)}×`);
  } finally {
    load.stop();
    await servers.stop();
  }
}
