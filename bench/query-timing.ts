/**
 * Sequential call timing for the search bench, shared by bench/search.ts (in-process calls) and
 * its gRPC client process (bench/search-client.ts): wall time and this process's CPU per call.
 */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

export interface Figures {
  median: number;
  p99: number;
  qps: number;
  /** CPU time of this process per call (user + system), which load on other processes barely moves. */
  cpuMedian: number;
  cpuP99: number;
}

/** Runs `call` for each input in turn (after a warm-up) and returns median and p99 in µs. */
export async function time<T>(inputs: T[], call: (input: T) => unknown, warmup = 20): Promise<Figures> {
  for (const input of inputs.slice(0, Math.min(warmup, inputs.length))) await call(input);
  const samples: number[] = [];
  const cpu: number[] = [];
  const started = process.hrtime.bigint();
  for (const input of inputs) {
    const c = process.cpuUsage();
    const t = process.hrtime.bigint();
    await call(input);
    samples.push(Number(process.hrtime.bigint() - t) / 1000);
    const used = process.cpuUsage(c);
    cpu.push(used.user + used.system);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  samples.sort((a, b) => a - b);
  cpu.sort((a, b) => a - b);
  return {
    median: percentile(samples, 50),
    p99: percentile(samples, 99),
    qps: inputs.length / seconds,
    cpuMedian: percentile(cpu, 50),
    cpuP99: percentile(cpu, 99),
  };
}
