import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, NearhubError, silentLogger } from "@nearhub/platform";
import { Registry } from "prom-client";
import { parseModelConfig } from "./model-config.js";
import { ModelManager, type BackendFactory, type ModelEvent } from "./model-manager.js";
import type { FetchedModel, ModelListing, ModelSource } from "./model-source.js";
import { InferenceMetrics } from "./model-statistics.js";
import type { ExecutionBackend } from "./onnx-backend.js";
import type { WorkerTensor } from "./onnx-protocol.js";

/** An identity backend whose runs wait for `open()`, so a test can hold requests in flight. */
class HeldBackend implements ExecutionBackend {
  readonly instances = 1;
  private gates: Array<() => void> = [];
  closed = false;
  async run(feeds: WorkerTensor[]) {
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return { outputs: feeds.map((f) => ({ ...f, name: "y" })), computeMs: 1 };
  }
  open(): void {
    for (const g of this.gates.splice(0)) g();
  }
  get waiting(): number {
    return this.gates.length;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Models of `size` bytes each, all `x: FP32[batch, 2] → y`. */
class MemorySource implements ModelSource {
  constructor(private readonly sizes: Record<string, number>) {}
  async list(): Promise<ModelListing[]> {
    return Object.keys(this.sizes).map((name) => ({ name, versions: ["1"] }));
  }
  async fetch(name: string): Promise<FetchedModel> {
    const size = this.sizes[name];
    if (size === undefined) throw new NearhubError(Code.NotFound, `no ${name}`);
    return {
      config: parseModelConfig(JSON.stringify({ max_batch_size: 4 }), name),
      bytes: new Uint8Array(size),
      where: name,
    };
  }
}

function setup(sizes: Record<string, number>, budget: number) {
  const backends = new Map<string, HeldBackend>();
  const events: ModelEvent[] = [];
  let loading = "";
  const createBackend: BackendFactory = async () => {
    const backend = new HeldBackend();
    backends.set(loading, backend);
    return {
      backend,
      signature: {
        inputs: [{ name: "x", type: "float32", shape: [-1, 2] }],
        outputs: [{ name: "y", type: "float32", shape: [-1, 2] }],
      },
    };
  };
  const manager = new ModelManager({
    source: new MemorySource(sizes),
    memoryBudgetBytes: budget,
    metrics: new InferenceMetrics(new Registry()),
    logger: silentLogger,
    createBackend,
    onEvent: (e) => events.push(e),
  });
  const load = async (name: string) => {
    loading = name;
    await manager.load(name, "1");
  };
  const infer = (name: string) =>
    manager.use(name, "", (model) =>
      model.scheduler.submit({
        tensors: [{ name: "x", type: "float32", dims: [1, 2], data: new Float32Array(2) }],
        batch: 1,
        shapeKey: "2",
      }),
    );
  return { manager, backends, events, load, infer };
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setImmediate(r));
}

describe("ModelManager", () => {
  test("unload waits for requests in flight, then frees the instances", async () => {
    const { manager, backends, events, load, infer } = setup({ a: 10 }, 100);
    await load("a");
    const backend = backends.get("a") as HeldBackend;
    const inflight = infer("a");
    await until(() => backend.waiting === 1);
    let unloaded = false;
    const unloading = manager.unload("a").then(() => (unloaded = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(unloaded, false);
    assert.equal(backend.closed, false);
    assert.deepEqual(
      (await manager.index(false)).map((m) => m.state),
      ["UNLOADING"],
    );
    backend.open();
    await inflight;
    await unloading;
    assert.equal(backend.closed, true);
    assert.equal(manager.state("a", "1"), "UNAVAILABLE");
    assert.deepEqual(
      events.map((e) => e.type),
      ["loaded", "unloaded"],
    );
  });

  test("the memory budget unloads the least recently used idle model", async () => {
    const { manager, backends, events, load, infer } = setup({ a: 40, b: 40, c: 40 }, 100);
    await load("a");
    await load("b");
    // Touch a, so b is the least recently used.
    const touch = infer("a");
    await until(() => (backends.get("a") as HeldBackend).waiting === 1);
    (backends.get("a") as HeldBackend).open();
    await touch;
    await load("c");
    assert.equal(manager.state("a", "1"), "READY");
    assert.equal(manager.state("b", "1"), "UNAVAILABLE");
    assert.equal(manager.state("c", "1"), "READY");
    assert.equal((backends.get("b") as HeldBackend).closed, true);
    assert.ok(events.some((e) => e.type === "unloaded" && e.name === "b" && e.reason === "memory_budget"));
  });

  test("a model with requests in flight is never unloaded for room: the new load is refused", async () => {
    const { manager, backends, load, infer } = setup({ a: 60, b: 60 }, 100);
    await load("a");
    const inflight = infer("a");
    await until(() => (backends.get("a") as HeldBackend).waiting === 1);
    await assert.rejects(load("b"), (e: NearhubError) => {
      assert.equal(e.code, Code.ResourceExhausted);
      assert.match(e.rawMessage, /held by models serving requests/);
      return true;
    });
    assert.equal(manager.state("a", "1"), "READY");
    (backends.get("a") as HeldBackend).open();
    await inflight;
    await load("b"); // now a is idle and makes room
    assert.equal(manager.state("a", "1"), "UNAVAILABLE");
    await manager.close();
  });

  test("a model larger than the whole budget is refused with what to change", async () => {
    const { load } = setup({ huge: 500 }, 100);
    await assert.rejects(load("huge"), (e: NearhubError) => {
      assert.equal(e.code, Code.ResourceExhausted);
      assert.match(e.rawMessage, /more than the whole memory budget.*NEARHUB_INFERENCE_MEMORY_BUDGET_MB/);
      return true;
    });
  });

  test("concurrent first requests share one load", async () => {
    const { manager, events, load } = setup({ a: 10 }, 100);
    await Promise.all([load("a"), load("a"), manager.load("a", "1")]);
    assert.equal(events.filter((e) => e.type === "loaded").length, 1);
  });
});
