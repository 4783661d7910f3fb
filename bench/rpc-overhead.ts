/**
 * The cost of the platform's RPC layer (interceptors, tracing hooks, metrics, typed client)
 * over bare grpc-js with the same protobuf serialization, on loopback: unary Echo latency,
 * median and p99, and the ratio between the two, measured in the same process.
 */
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { EchoRequestSchema, EchoResponseSchema, EchoService } from "@nearhub/proto/echo";
import { RpcServer, ServiceMetrics, createClient, methodDefinition, silentLogger } from "@nearhub/platform";

const CALLS = Number(process.env["BENCH_CALLS"] ?? 3000);
const WARMUP = 300;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function time(
  label: string,
  call: () => Promise<unknown>,
): Promise<{ label: string; median: number; p99: number }> {
  for (let i = 0; i < WARMUP; i++) await call();
  const samples: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    const t = process.hrtime.bigint();
    await call();
    samples.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  samples.sort((a, b) => a - b);
  return { label, median: percentile(samples, 50), p99: percentile(samples, 99) };
}

export async function main(): Promise<void> {
  // nearhub's layer
  const server = new RpcServer({ service: "bench", logger: silentLogger, metrics: new ServiceMetrics("bench") });
  server.addService(EchoService, {
    echo: async (req) => ({ text: req.text }),
    echoServerStream: async function* () {},
    echoClientStream: async () => ({}),
    echoBidiStream: async function* () {},
  });
  const port = await server.listen("127.0.0.1", 0);
  const client = createClient(EchoService, `127.0.0.1:${port}`);

  // bare grpc-js, same serialization
  const raw = new grpc.Server();
  const def = methodDefinition(EchoService.method.echo);
  raw.addService(
    { Echo: def },
    {
      Echo: (call: grpc.ServerUnaryCall<{ text: string }, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        cb(null, create(EchoResponseSchema, { text: call.request.text })),
    },
  );
  const rawPort = await new Promise<number>((resolve, reject) =>
    raw.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const rawClient = new grpc.Client(`127.0.0.1:${rawPort}`, grpc.credentials.createInsecure());
  const message = create(EchoRequestSchema, { text: "hello" });
  const rawCall = () =>
    new Promise((resolve, reject) =>
      rawClient.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, message, (e, v) =>
        e ? reject(e) : resolve(v),
      ),
    );

  // Interleave the runs so machine noise hits both alike.
  const results: Array<{ label: string; median: number; p99: number }> = [];
  for (let round = 0; round < 2; round++) {
    results.push(await time("grpc-js bare", rawCall));
    results.push(await time("nearhub rpc", () => client.echo({ text: "hello" })));
  }
  const best = (label: string) => {
    const rows = results.filter((r) => r.label === label);
    return { median: Math.min(...rows.map((r) => r.median)), p99: Math.min(...rows.map((r) => r.p99)) };
  };
  const bare = best("grpc-js bare");
  const ours = best("nearhub rpc");
  console.log(`rpc-overhead: ${CALLS} sequential unary calls on loopback (best of 2 interleaved rounds)`);
  console.log(`  grpc-js bare   median ${bare.median.toFixed(0)} µs   p99 ${bare.p99.toFixed(0)} µs`);
  console.log(`  nearhub rpc    median ${ours.median.toFixed(0)} µs   p99 ${ours.p99.toFixed(0)} µs`);
  console.log(
    `  ratio (nearhub/bare): median ${(ours.median / bare.median).toFixed(2)}x   p99 ${(ours.p99 / bare.p99).toFixed(2)}x`,
  );

  client.$close();
  rawClient.close();
  await server.shutdown(1000);
  raw.forceShutdown();
}
