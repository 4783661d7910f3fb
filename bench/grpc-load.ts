/**
 * A gRPC load generator that keeps many requests in flight: unary calls or one bidi stream,
 * closed-loop at a fixed concurrency or open-loop at a fixed rate (latency measured from the
 * scheduled send time, so a slow server cannot hide its queueing). Requests are pre-serialized
 * bytes and responses are not decoded, so the generator costs the server's CPU as little as it
 * can. Run as a child process (`fork`) so it does not share the server's event loop; it takes
 * one {@link LoadSpec} per IPC message and answers a {@link LoadResult}.
 */
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
  /** Open-loop instead: requests started per second (unary only). */
  rate?: number;
  durationMs: number;
  warmupMs: number;
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
  const record = (sentAt: number, error?: unknown) => {
    const now = performance.now();
    if (sentAt < measureFrom || (open ? sentAt >= stopAt : now > stopAt)) return;
    if (error) {
      errors++;
      firstError ??= (error as Error).message;
      return;
    }
    measuredCompleted++;
    latencies.push(now - sentAt);
  };

  if (spec.kind === "unary") {
    const call = (sentAt: number) =>
      new Promise<void>((resolve) => {
        client.makeUnaryRequest(spec.path, passthrough, identity, request, metadata, (error) => {
          record(sentAt, error ?? undefined);
          resolve();
        });
      });
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
  const sorted = Float64Array.from(latencies).sort();
  const seconds = spec.durationMs / 1000;
  return {
    completed: measuredCompleted,
    errors,
    seconds,
    throughput: measuredCompleted / seconds,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    ...(open ? { sendLagP99: percentile(Float64Array.from(lags).sort(), 99) } : {}),
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
