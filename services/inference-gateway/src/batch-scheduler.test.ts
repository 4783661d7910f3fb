import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import { Code, NearhubError } from "@nearhub/platform";
import { BatchScheduler, type SchedulerOptions } from "./batch-scheduler.js";
import type { ExecutionBackend } from "./onnx-backend.js";
import type { WorkerTensor } from "./onnx-protocol.js";

/** An identity backend whose runs wait until the test opens the gate. */
class GatedBackend implements ExecutionBackend {
  runs: WorkerTensor[][] = [];
  private gates: Array<() => void> = [];
  closed = false;
  constructor(readonly instances = 1) {}

  async run(feeds: WorkerTensor[]) {
    this.runs.push(feeds);
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return { outputs: feeds.map((f) => ({ ...f, name: `${f.name}_out` })), computeMs: 1 };
  }

  /** Lets every waiting run finish. */
  open(): void {
    for (const g of this.gates.splice(0)) g();
  }

  /** Runs waiting at the gate. */
  get waiting(): number {
    return this.gates.length;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.open();
  }
}

/** A gated backend that also takes several independent runs in one hand-off. */
class GroupingBackend extends GatedBackend {
  groups: number[] = [];

  async runMany(runs: Array<{ feeds: WorkerTensor[]; outputs: string[] }>) {
    this.groups.push(runs.length);
    return Promise.all(
      runs.map(async (r) => {
        // A negative first value stands for an input the model refuses.
        if ((r.feeds[0]?.data as Float32Array)[0] === -1) {
          return { error: new NearhubError(Code.InvalidArgument, "the model rejected the inputs: negative") };
        }
        return this.run(r.feeds);
      }),
    );
  }
}

const options = (over: Partial<SchedulerOptions> = {}): SchedulerOptions => ({
  maxBatchSize: 8,
  dynamicBatching: true,
  preferredBatchSizes: [],
  maxQueueDelayMicros: 0,
  maxQueueSize: 16,
  outputs: ["x_out"],
  label: "model test version 1",
  ...over,
});

function request(rows: number, start: number, width = 2) {
  const data = Float32Array.from({ length: rows * width }, (_, i) => start + i);
  return { tensors: [{ name: "x", type: "float32", dims: [rows, width], data }], batch: rows, shapeKey: `${width}` };
}

/** Settles what is pending now: promise callbacks, then the end of the event-loop turn (hand-offs). */
async function flush(): Promise<void> {
  await microtasks();
  await new Promise<void>((resolve) => setImmediate(resolve));
  await microtasks();
}

async function microtasks(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

describe("BatchScheduler", () => {
  test("queued requests are concatenated into one execution and split back by rows", async () => {
    const backend = new GatedBackend();
    const scheduler = new BatchScheduler(backend, options());
    const first = scheduler.submit(request(1, 0));
    await flush();
    const rest = [
      scheduler.submit(request(2, 100)),
      scheduler.submit(request(1, 200)),
      scheduler.submit(request(3, 300)),
    ];
    await flush();
    assert.equal(backend.runs.length, 1, "the first request runs alone while the others queue");
    backend.open();
    await first;
    await flush();
    assert.equal(backend.runs.length, 2, "the three queued requests run as one batch");
    assert.deepEqual(backend.runs[1]?.[0]?.dims, [6, 2]);
    backend.open();
    const results = await Promise.all(rest);
    assert.deepEqual(Array.from(results[0]?.outputs[0]?.data as Float32Array), [100, 101, 102, 103]);
    assert.deepEqual(Array.from(results[1]?.outputs[0]?.data as Float32Array), [200, 201]);
    assert.deepEqual(Array.from(results[2]?.outputs[0]?.data as Float32Array), [300, 301, 302, 303, 304, 305]);
    assert.deepEqual(results[2]?.outputs[0]?.dims, [3, 2]);
    assert.equal(results[0]?.timing.batchSize, 6);
    assert.equal(scheduler.executions, 2);
  });

  test("requests of other shapes and rows beyond max_batch_size wait for the next execution", async () => {
    const backend = new GatedBackend();
    const scheduler = new BatchScheduler(backend, options({ maxBatchSize: 4 }));
    const first = scheduler.submit(request(1, 0));
    await flush();
    const a = scheduler.submit(request(3, 10));
    const b = scheduler.submit(request(2, 20, 3)); // other width: not compatible with a
    const c = scheduler.submit(request(2, 30)); // 3 + 2 > 4
    await flush();
    backend.open();
    await first;
    await flush();
    assert.deepEqual(backend.runs[1]?.[0]?.dims, [3, 2]);
    backend.open();
    await a;
    await flush();
    assert.deepEqual(backend.runs[2]?.[0]?.dims, [2, 3]);
    backend.open();
    await b;
    await flush();
    backend.open();
    await c;
    assert.equal(backend.runs.length, 4);
  });

  test("a batch that reaches the preferred size leaves at once; a smaller one waits for the queue delay", async () => {
    const backend = new GatedBackend();
    // A ten-minute delay: only reaching the preferred size (or closing) can dispatch.
    const scheduler = new BatchScheduler(
      backend,
      options({ preferredBatchSizes: [4], maxQueueDelayMicros: 600_000_000 }),
    );
    const two = [scheduler.submit(request(1, 0)), scheduler.submit(request(1, 1))];
    await flush();
    assert.equal(backend.runs.length, 0, "two rows wait for more");
    two.push(scheduler.submit(request(2, 2)));
    await flush();
    assert.equal(backend.runs.length, 1, "four rows reach the preferred size");
    assert.deepEqual(backend.runs[0]?.[0]?.dims, [4, 2]);
    backend.open();
    await Promise.all(two);
    const lone = scheduler.submit(request(1, 9));
    await flush();
    assert.equal(backend.runs.length, 1);
    scheduler.close(); // closing flushes what waits
    await flush();
    backend.open();
    await lone;
    assert.equal(backend.runs.length, 2);
  });

  test("a full queue answers RESOURCE_EXHAUSTED at once", async () => {
    const backend = new GatedBackend();
    const scheduler = new BatchScheduler(backend, options({ maxQueueSize: 2, dynamicBatching: false }));
    const running = scheduler.submit(request(1, 0));
    await flush();
    const queued = [scheduler.submit(request(1, 1)), scheduler.submit(request(1, 2))];
    await assert.rejects(scheduler.submit(request(1, 3)), (e: NearhubError) => {
      assert.equal(e.code, Code.ResourceExhausted);
      assert.match(e.rawMessage, /queue is full \(2 requests waiting\).*max_queue_size/);
      return true;
    });
    backend.open();
    await running;
    for (const q of queued) {
      await flush();
      backend.open();
      await q;
    }
    assert.equal(backend.runs.length, 3);
  });

  test("a request whose deadline passes in the queue is dropped before compute with DEADLINE_EXCEEDED", async () => {
    const backend = new GatedBackend();
    const dropped: string[] = [];
    const scheduler = new BatchScheduler(backend, options(), undefined, (reason) => dropped.push(reason));
    const running = scheduler.submit(request(1, 0));
    await flush();
    const late = scheduler.submit({ ...request(1, 1), deadline: Date.now() + 1 });
    const live = scheduler.submit(request(1, 2));
    await sleep(5); // the deadline is now in the past
    backend.open();
    await running;
    await assert.rejects(late, (e: NearhubError) => {
      assert.equal(e.code, Code.DeadlineExceeded);
      assert.match(e.rawMessage, /deadline passed while queued/);
      return true;
    });
    await flush();
    backend.open();
    await live;
    assert.equal(backend.runs.length, 2);
    assert.deepEqual(backend.runs[1]?.[0]?.dims, [1, 2], "the expired request never reached the model");
    assert.deepEqual(dropped, ["deadline"]);
  });

  test("an aborted call leaves the queue at once and never runs", async () => {
    const backend = new GatedBackend();
    const scheduler = new BatchScheduler(backend, options());
    const running = scheduler.submit(request(1, 0));
    await flush();
    const controller = new AbortController();
    const aborted = scheduler.submit({ ...request(1, 1), signal: controller.signal });
    assert.equal(scheduler.queued, 1);
    controller.abort(new NearhubError(Code.DeadlineExceeded, "deadline"));
    await assert.rejects(aborted, (e: NearhubError) => e.code === Code.DeadlineExceeded);
    assert.equal(scheduler.queued, 0);
    backend.open();
    await running;
    await scheduler.idle();
    assert.equal(backend.runs.length, 1);
  });

  test("a request whose call was cancelled while queued is dropped before compute", async () => {
    const backend = new GatedBackend();
    const dropped: string[] = [];
    const scheduler = new BatchScheduler(backend, options(), undefined, (reason) => dropped.push(reason));
    const running = scheduler.submit(request(1, 0));
    await flush();
    const call = { aborted: false };
    const cancelled = scheduler.submit({ ...request(1, 1), call });
    const kept = scheduler.submit({ ...request(1, 2), call: { aborted: false } });
    call.aborted = true;
    backend.open();
    await running;
    await assert.rejects(cancelled, (e: NearhubError) => e.code === Code.Cancelled);
    await flush();
    backend.open();
    await kept;
    await scheduler.idle();
    assert.equal(backend.runs.length, 2, "the cancelled request never ran");
    assert.deepEqual(dropped, ["cancelled"]);
  });

  test("N instances run N executions at once", async () => {
    const backend = new GatedBackend(3);
    const scheduler = new BatchScheduler(backend, options({ dynamicBatching: false }));
    const all = Array.from({ length: 5 }, (_, i) => scheduler.submit(request(1, i)));
    await flush();
    assert.equal(backend.waiting, 3);
    assert.equal(scheduler.pending, 5);
    while (backend.runs.length < 5 || backend.waiting > 0) {
      backend.open();
      await flush();
    }
    await Promise.all(all);
    assert.equal(scheduler.pending, 0);
  });

  test("without batching, requests that queued up reach a free instance in one hand-off and settle one by one", async () => {
    const backend = new GroupingBackend();
    const scheduler = new BatchScheduler(backend, options({ dynamicBatching: false }));
    const first = scheduler.submit(request(1, 0));
    await flush();
    const queued = [
      scheduler.submit(request(1, 10)),
      scheduler.submit(request(1, -1)),
      scheduler.submit(request(2, 30)),
    ];
    const settled = Promise.allSettled(queued);
    await flush();
    assert.deepEqual(backend.groups, [], "a lone request goes by itself");
    backend.open();
    await first;
    await flush();
    assert.deepEqual(backend.groups, [3], "the three queued requests go to the instance together");
    assert.equal(backend.runs.length, 3, "each still runs on its own, never concatenated");
    assert.deepEqual(
      backend.runs.map((feeds) => feeds[0]?.dims),
      [
        [1, 2],
        [1, 2],
        [2, 2],
      ],
    );
    backend.open();
    const [a, refused, b] = await settled;
    assert.equal(a?.status, "fulfilled");
    assert.deepEqual(
      Array.from((a as PromiseFulfilledResult<{ outputs: WorkerTensor[] }>).value.outputs[0]?.data as Float32Array),
      [10, 11],
    );
    assert.equal(refused?.status, "rejected");
    assert.equal((refused.reason as NearhubError).code, Code.InvalidArgument);
    assert.match((refused.reason as Error).message, /rejected the inputs/);
    assert.deepEqual(
      Array.from((b as PromiseFulfilledResult<{ outputs: WorkerTensor[] }>).value.outputs[0]?.data as Float32Array),
      [30, 31, 32, 33],
    );
    assert.equal(scheduler.executions, 4);
    assert.equal(scheduler.pending, 0);
  });

  test("without batching, 256 requests in flight run in arrival order, none behind more than 256 / 32 + 1 groups", async () => {
    const backend = new GroupingBackend();
    const scheduler = new BatchScheduler(backend, options({ dynamicBatching: false, maxQueueSize: 1024 }));
    // A closed loop at concurrency 256, as the bench drives it: each answer sends the next request.
    const concurrency = 256;
    const total = 2048;
    /** Per request id: how many groups had been handed to the instance when it was submitted. */
    const submittedAt: number[] = [];
    const ran: number[] = [];
    const origRun = backend.run.bind(backend);
    backend.run = (feeds: WorkerTensor[]) => {
      ran.push((feeds[0]?.data as Float32Array)[0] as number);
      return origRun(feeds);
    };
    /** Per request id: the group it ran in (1-based). */
    const groupOf: number[] = [];
    const origRunMany = backend.runMany.bind(backend);
    backend.runMany = (runs: Array<{ feeds: WorkerTensor[]; outputs: string[] }>) => {
      const group = backend.groups.length + 1;
      for (const r of runs) groupOf[(r.feeds[0]?.data as Float32Array)[0] as number] = group;
      return origRunMany(runs);
    };
    let next = 0;
    const inFlight = new Set<Promise<unknown>>();
    const send = (): void => {
      if (next >= total) return;
      const id = next++;
      submittedAt[id] = backend.groups.length;
      const p = scheduler.submit(request(1, id)).then(() => {
        inFlight.delete(p);
        send();
      });
      inFlight.add(p);
    };
    for (let i = 0; i < concurrency; i++) send();
    while (inFlight.size > 0) {
      await flush();
      backend.open();
      await flush();
    }
    assert.equal(ran.length, total);
    assert.deepEqual(
      ran,
      Array.from({ length: total }, (_, i) => i),
      "first in, first run",
    );
    assert.ok(Math.max(...backend.groups) <= 32, "at most 32 requests per hand-off");
    const bound = concurrency / 32 + 1;
    for (let id = 0; id < total; id++) {
      const waited = (groupOf[id] ?? 1) - (submittedAt[id] as number);
      assert.ok(waited <= bound, `request ${id} ran ${waited} groups after it was submitted (bound ${bound})`);
    }
    assert.equal(scheduler.pending, 0);
  });

  test("queue delays below and above the timer's millisecond still dispatch a lone request", async () => {
    for (const maxQueueDelayMicros of [200, 3_000]) {
      const backend = new GatedBackend();
      const scheduler = new BatchScheduler(backend, options({ maxQueueDelayMicros }));
      const lone = scheduler.submit(request(1, 5));
      // Not flush(): a loaded machine can spend the 200 µs before the end of the turn.
      await microtasks();
      assert.equal(backend.runs.length, 0, "the request waits for company first");
      while (backend.runs.length === 0) await sleep(1);
      backend.open();
      const result = await lone;
      assert.deepEqual(Array.from(result.outputs[0]?.data as Float32Array), [5, 6]);
      assert.equal(result.timing.batchSize, 1);
      assert.equal(scheduler.executions, 1);
    }
  });
  test("requests submitted in one turn while an instance is free reach it in one execution", async () => {
    const backend = new GatedBackend();
    const scheduler = new BatchScheduler(backend, options());
    const all = [scheduler.submit(request(1, 0)), scheduler.submit(request(2, 10)), scheduler.submit(request(1, 20))];
    await microtasks();
    assert.equal(backend.runs.length, 0, "the hand-off waits for the end of the turn");
    await flush();
    assert.equal(backend.runs.length, 1);
    assert.deepEqual(backend.runs[0]?.[0]?.dims, [4, 2]);
    backend.open();
    const results = await Promise.all(all);
    assert.deepEqual(Array.from(results[1]?.outputs[0]?.data as Float32Array), [10, 11, 12, 13]);
    assert.equal(scheduler.executions, 1);
  });

  test("without batching, one turn's requests reach a free instance in one hand-off", async () => {
    const backend = new GroupingBackend();
    const scheduler = new BatchScheduler(backend, options({ dynamicBatching: false }));
    const all = [scheduler.submit(request(1, 0)), scheduler.submit(request(1, 10))];
    await flush();
    assert.deepEqual(backend.groups, [2]);
    backend.open();
    await Promise.all(all);
    assert.equal(scheduler.executions, 2);
  });

  test("the queue bound counts requests waiting for an instance, not those the turn's hand-off takes", async () => {
    const backend = new GatedBackend();
    const scheduler = new BatchScheduler(backend, options({ maxQueueSize: 1, dynamicBatching: false }));
    // The instance is free: the first request is the hand-off's, the second waits, the third is refused.
    const first = scheduler.submit(request(1, 0));
    const second = scheduler.submit(request(1, 1));
    await assert.rejects(scheduler.submit(request(1, 2)), (e: NearhubError) => e.code === Code.ResourceExhausted);
    await flush();
    assert.equal(backend.runs.length, 1);
    assert.equal(scheduler.queued, 1);
    backend.open();
    await first;
    await flush();
    backend.open();
    await second;
    assert.equal(backend.runs.length, 2);
  });
});
