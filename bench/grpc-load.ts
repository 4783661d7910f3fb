/**
 * A gRPC load generator that keeps many requests in flight: unary calls or one bidi stream,
 * closed-loop at a fixed concurrency or open-loop at a fixed rate (latency measured from the
 * scheduled send time, so a slow server cannot hide its queueing). Requests are pre-serialized
 * bytes and responses are not decoded, and unary calls go straight onto an HTTP/2 session (the
 * grpc-js client costs about twice the CPU per call, more than the bare echo server it drives, so
 * it would set the ceiling it is meant to measure); each result reports the generator's own CPU
 * per call and event-loop delay. Run as a child process (`fork`) so it does not share the server's
 * event loop; it takes one {@link LoadSpec} per IPC message and answers a {@link LoadResult}.
 */
import * as http2 from "node:http2";
import * as net from "node:net";
import { monitorEventLoopDelay } from "node:perf_hooks";
import * as grpc from "@grpc/grpc-js";

/** One load run. */
export interface LoadSpec {
  target: string;
  /** `/package.Service/Method`. */
  path: string;
  kind: "unary" | "stream";
  /** The serialized request. */
  request: Uint8Array;
  /** Closed-loop: requests kept in flight. */
  concurrency: number;
  /** Request metadata sent with every call, e.g. `authorization`. */
  metadata?: Record<string, string>;
  /** Unary calls through the grpc-js client instead of raw HTTP/2 (to compare the generators). */
  client?: "grpc-js" | "raw";
  /** Open-loop instead: requests started per second (unary only). */
  rate?: number;
  durationMs: number;
  warmupMs: number;
}

/** Records one finished call: its intended send time and its error, if any. */
type RecordCall = (sentAt: number, error: unknown, startedAt: number) => void;

/** A unary call through the grpc-js client (about twice the CPU of {@link RawUnary} per call). */
function grpcJsUnary(
  client: grpc.Client,
  spec: LoadSpec,
  request: Buffer,
  metadata: grpc.Metadata,
  record: RecordCall,
): (sentAt: number) => Promise<void> {
  return (sentAt) =>
    new Promise<void>((resolve) => {
      const startedAt = performance.now();
      client.makeUnaryRequest(spec.path, passthrough, identity, request, metadata, (error) => {
        record(sentAt, error ?? undefined, startedAt);
        resolve();
      });
    });
}

/**
 * Unary gRPC calls written straight onto one HTTP/2 session: the same bytes on the wire as a
 * grpc-js client (headers, the length-prefixed request, trailers with grpc-status), without the
 * client's per-call machinery (interceptor chain, call stack, metadata copies), so the generator
 * costs less CPU per call than the servers it measures and does not set the ceiling itself.
 */
class RawUnary {
  private constructor(
    private readonly session: http2.ClientHttp2Session,
    private readonly headers: http2.OutgoingHttpHeaders,
    private readonly frame: Buffer,
  ) {}

  static async connect(spec: LoadSpec, request: Buffer): Promise<RawUnary> {
    const [host, port] = splitHostPort(spec.target);
    const session = http2.connect(`http://${spec.target}`, {
      settings: { initialWindowSize: 16 * 1024 * 1024, enablePush: false },
      // TCP_NODELAY, as grpc-js sets on its connections: with Nagle on, a call's DATA frame can
      // wait behind its HEADERS frame for a delayed ACK (up to 40 ms on Linux).
      createConnection: () => net.connect({ host, port, noDelay: true }),
    });
    await new Promise<void>((resolve, reject) => {
      session.once("connect", () => resolve());
      session.once("error", reject);
    });
    session.on("error", () => undefined);
    session.setLocalWindowSize(16 * 1024 * 1024);
    // The gRPC message frame: compression flag 0, 4-byte big-endian length, the message.
    const frame = Buffer.alloc(5 + request.byteLength);
    frame.writeUInt32BE(request.byteLength, 1);
    request.copy(frame, 5);
    const headers: http2.OutgoingHttpHeaders = {
      ":method": "POST",
      ":path": spec.path,
      ":scheme": "http",
      ":authority": spec.target,
      "content-type": "application/grpc",
      te: "trailers",
      "user-agent": "nearhub-grpc-load",
      ...spec.metadata,
    };
    return new RawUnary(session, headers, frame);
  }

  /** One call: resolves when it finished, after recording its latency or error. */
  unary(record: RecordCall): (sentAt: number) => Promise<void> {
    return (sentAt) =>
      new Promise<void>((resolve) => {
        let status: string | undefined;
        let message: string | undefined;
        const startedAt = performance.now();
        const stream = this.session.request(this.headers);
        const onHeaders = (h: http2.IncomingHttpHeaders) => {
          const s = h["grpc-status"];
          if (s !== undefined) {
            status = String(s);
            message = h["grpc-message"] === undefined ? undefined : decodeURIComponent(String(h["grpc-message"]));
          }
        };
        stream.on("response", onHeaders);
        stream.on("trailers", onHeaders);
        // The response body is not decoded: reading it keeps the flow-control window open.
        stream.on("data", noop);
        stream.on("error", (e: Error) => (message ??= e.message));
        stream.on("close", () => {
          record(
            sentAt,
            status === "0" ? undefined : new Error(`grpc-status ${status ?? "missing"}: ${message ?? "no message"}`),
            startedAt,
          );
          resolve();
        });
        stream.end(this.frame);
      });
  }

  close(): void {
    this.session.close();
  }
}

const noop = () => undefined;

function splitHostPort(target: string): [string, number] {
  const colon = target.lastIndexOf(":");
  return [target.slice(0, colon).replace(/^\[|\]$/g, ""), Number(target.slice(colon + 1))];
}

/** What a run measured (latencies in milliseconds). */
export interface LoadResult {
  completed: number;
  errors: number;
  seconds: number;
  throughput: number;
  p50: number;
  p99: number;
  /** Open loop: p99 of how late the generator itself sent after the scheduled time (ms). */
  sendLagP99?: number;
  /** Open loop: p99 latency counted from when the call was actually sent (ms); diagnostic only. */
  p99FromSend?: number;
  /** The generator's own CPU per completed call (µs), so a result shows when it is the limit. */
  generatorCpuUs?: number;
  /** p99 of the generator's event-loop delay over the measured window (ms). */
  generatorLoopDelayP99?: number;
  firstError?: string;
}

const identity = (b: Buffer) => b;
const passthrough = (b: Buffer | Uint8Array) => (Buffer.isBuffer(b) ? b : Buffer.from(b));

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** Runs one spec against a server. */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const client = new grpc.Client(spec.target, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.enable_channelz": 0,
  });
  await new Promise<void>((resolve, reject) =>
    client.waitForReady(Date.now() + 5000, (e) => (e ? reject(e) : resolve())),
  );
  const request = Buffer.from(spec.request);
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(spec.metadata ?? {})) metadata.set(k, v);
  const h2 = await RawUnary.connect(spec, request);
  const latencies: number[] = [];
  const lags: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const measureFrom = start + spec.warmupMs;
  const stopAt = measureFrom + spec.durationMs;
  let measuredCompleted = 0;
  // Closed loop counts what completes inside the window. Open loop counts every request
  // scheduled inside it, however late it completes (dropping the slow tail would hide queueing).
  const open = spec.kind === "unary" && spec.rate !== undefined && spec.rate > 0;
  // The generator's own cost over the measured window: CPU and event-loop delay.
  const loopDelay = monitorEventLoopDelay({ resolution: 1 });
  let cpuAtStart: NodeJS.CpuUsage | undefined;
  let cpu: NodeJS.CpuUsage | undefined;
  const windowStart = setTimeout(() => {
    cpuAtStart = process.cpuUsage();
    loopDelay.enable();
  }, spec.warmupMs);
  const windowEnd = setTimeout(() => {
    cpu = process.cpuUsage(cpuAtStart);
    loopDelay.disable();
  }, spec.warmupMs + spec.durationMs);
  // Open loop: latency from the actual send as well, to tell the server's share from the generator's lag.
  const fromSend: number[] = [];
  const record = (sentAt: number, error?: unknown, startedAt = sentAt) => {
    const now = performance.now();
    if (sentAt < measureFrom || (open ? sentAt >= stopAt : now > stopAt)) return;
    if (error) {
      errors++;
      firstError ??= (error as Error).message;
      return;
    }
    measuredCompleted++;
    latencies.push(now - sentAt);
    if (open) fromSend.push(now - startedAt);
  };

  if (spec.kind === "unary") {
    const call = spec.client === "grpc-js" ? grpcJsUnary(client, spec, request, metadata, record) : h2.unary(record);
    if (open) {
      // Sends follow the wall clock (the schedule never waits for answers) and each latency
      // counts from its scheduled time; how late the generator itself sent is reported apart.
      const interval = 1000 / (spec.rate as number);
      const inflight = new Set<Promise<void>>();
      let next = performance.now();
      while (next < stopAt) {
        let now = performance.now();
        while (next <= now && next < stopAt) {
          if (next >= measureFrom) lags.push(now - next);
          const p = call(next);
          inflight.add(p);
          void p.then(() => inflight.delete(p));
          next += interval;
          now = performance.now();
        }
        await new Promise((r) => setTimeout(r, Math.max(0, Math.min(1, next - performance.now()))));
      }
      await Promise.all(inflight);
    } else {
      await Promise.all(
        Array.from({ length: spec.concurrency }, async () => {
          while (performance.now() < stopAt) await call(performance.now());
        }),
      );
    }
  } else {
    const stream = client.makeBidiStreamRequest(spec.path, passthrough, identity, metadata);
    const sent: number[] = [];
    let head = 0;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    let stopping = false;
    const send = () => {
      sent.push(performance.now());
      stream.write(request);
    };
    stream.on("data", (bytes: Buffer) => {
      const sentAt = sent[head++] as number;
      // ModelStreamInferResponse: field 1 (error_message) first when set.
      record(sentAt, bytes[0] === 0x0a ? new Error("stream error_message") : undefined);
      if (!stopping && performance.now() < stopAt) send();
      else if (!stopping) {
        stopping = true;
        stream.end();
      }
    });
    stream.on("error", (e: Error) => {
      errors++;
      firstError ??= e.message;
      done();
    });
    stream.on("end", () => done());
    stream.on("status", () => done());
    for (let i = 0; i < spec.concurrency; i++) send();
    await finished;
  }
  client.close();
  h2.close();
  clearTimeout(windowStart);
  clearTimeout(windowEnd);
  cpu ??= process.cpuUsage(cpuAtStart);
  loopDelay.disable();
  const sorted = Float64Array.from(latencies).sort();
  const seconds = spec.durationMs / 1000;
  return {
    completed: measuredCompleted,
    errors,
    seconds,
    throughput: measuredCompleted / seconds,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    ...(open
      ? {
          sendLagP99: percentile(Float64Array.from(lags).sort(), 99),
          p99FromSend: percentile(Float64Array.from(fromSend).sort(), 99),
        }
      : {}),
    generatorCpuUs: (cpu.user + cpu.system) / Math.max(1, measuredCompleted),
    generatorLoopDelayP99: loopDelay.count > 0 ? loopDelay.percentile(99) / 1e6 : NaN,
    ...(firstError ? { firstError } : {}),
  };
}

// As a child process: one run per message.
if (process.send) {
  process.on("message", (message: LoadSpec & { request: number[] | Uint8Array }) => {
    const spec = { ...message, request: Uint8Array.from(message.request) };
    runLoad(spec).then(
      (result) => process.send?.(result),
      (error: unknown) => process.send?.({ error: (error as Error).message }),
    );
  });
  process.send({ ready: true });
}
