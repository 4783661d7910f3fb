import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, NearhubError, RpcServer, ServiceMetrics, silentLogger, type ServiceImpl } from "@nearhub/platform";
import { GRPCInferenceService, ModelInferRequestSchema } from "@nearhub/proto/inference";
import { Registry } from "prom-client";
import { RemoteBackends } from "./remote-backends.js";

/** A KServe v2 server holding model `m` whose ModelInfer fails with `failWith` or answers its id. */
async function fakeBackend(
  failWith?: Code,
): Promise<{ address: string; calls: () => number; stop: () => Promise<void> }> {
  let calls = 0;
  const unimplemented = async (): Promise<never> => {
    throw new NearhubError(Code.Unimplemented, "not in this fake");
  };
  const impl: ServiceImpl<typeof GRPCInferenceService> = {
    serverLive: async () => ({ live: true }),
    serverReady: async () => ({ ready: true }),
    modelReady: unimplemented,
    serverMetadata: unimplemented,
    modelMetadata: unimplemented,
    modelInfer: async (request) => {
      calls++;
      if (failWith !== undefined) throw new NearhubError(failWith, "backend failure");
      return { modelName: request.modelName, id: request.id };
    },
    modelStreamInfer: async function* () {},
    modelStatistics: unimplemented,
    repositoryIndex: async () => ({ models: [{ name: "m", version: "1", state: "READY" }] }),
    repositoryModelLoad: unimplemented,
    repositoryModelUnload: unimplemented,
  };
  const server = new RpcServer({ service: "fake", logger: silentLogger, metrics: new ServiceMetrics("fake") });
  server.addService(GRPCInferenceService, impl);
  const port = await server.listen("127.0.0.1", 0);
  return { address: `127.0.0.1:${port}`, calls: () => calls, stop: () => server.shutdown(100) };
}

describe("RemoteBackends", () => {
  let bad: Awaited<ReturnType<typeof fakeBackend>>;
  let good: Awaited<ReturnType<typeof fakeBackend>>;
  let pool: RemoteBackends;

  before(async () => {
    bad = await fakeBackend(Code.Internal);
    good = await fakeBackend();
    pool = new RemoteBackends({
      addresses: [bad.address, good.address],
      probeIntervalMs: 3_600_000,
      ejectAfterFailures: 3,
      ejectionMs: 3_600_000,
      connectTimeoutMs: 2000,
      logger: silentLogger,
      registry: new Registry(),
    });
    await pool.start();
  });

  after(async () => {
    pool.close();
    await bad.stop();
    await good.stop();
  });

  test("a backend failing after the request reached it is not retried, and is ejected after 3 failures", async () => {
    assert.deepEqual(
      pool.status().map((s) => [s.healthy, s.models]),
      [
        [true, ["m"]],
        [true, ["m"]],
      ],
    );
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) {
      // Sequential: both backends idle, so the first listed (bad) is picked until it is ejected.
      const request = create(ModelInferRequestSchema, { modelName: "m", id: `r${i}` });
      outcomes.push(
        await pool.infer(request, new Date(Date.now() + 10_000)).then(
          (r) => `ok ${r.id}`,
          (e: NearhubError) => `error ${Code[e.code]}`,
        ),
      );
    }
    assert.deepEqual(outcomes, [
      "error Internal",
      "error Internal",
      "error Internal",
      "ok r3",
      "ok r4",
      "ok r5",
      "ok r6",
      "ok r7",
    ]);
    assert.equal(bad.calls(), 3, "each failed request reached exactly one backend");
    assert.equal(good.calls(), 5);
    assert.equal(pool.status()[0]?.ejected, true);
  });

  test("a model no backend serves is NOT_FOUND", async () => {
    await assert.rejects(
      pool.infer(create(ModelInferRequestSchema, { modelName: "other" }), undefined),
      (e: NearhubError) => {
        assert.equal(e.code, Code.NotFound);
        return true;
      },
    );
  });
});
