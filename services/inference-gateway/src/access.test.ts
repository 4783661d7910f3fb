import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Access,
  Bus,
  Code,
  NearhubError,
  ROLE_PERMISSIONS,
  createClient,
  parseEnv,
  silentLogger,
  type Role,
} from "@nearhub/platform";
import { GRPCInferenceService } from "@nearhub/proto/inference";
import { adminAuth, deleteNamespace, eventually, nats, serviceEnv, tempDir, uniqueNamespace } from "@nearhub/testing";
import { inferenceEnv } from "./config.js";
import { addModel } from "./onnx-model-builder.js";
import { startInferenceGateway, type InferenceGateway } from "./service.js";

const ROLES: Role[] = ["viewer", "developer", "maintainer", "admin"];

// Who may run, load and see which model, over the KServe v2 protocol.
describe("inference gateway: access control per role and scope", { timeout: 180_000 }, () => {
  const ns = uniqueNamespace();
  let natsUrl: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let gateway: InferenceGateway;
  let owner: Access;
  let bus: Bus;
  const secrets = new Map<string, string>();

  const client = (token?: string) =>
    createClient(GRPCInferenceService, `127.0.0.1:${gateway.grpcPort}`, {
      timeoutMs: 60_000,
      ...(token ? { metadata: { authorization: `Bearer ${token}` } } : {}),
    });
  const request = (modelName: string) => ({
    modelName,
    inputs: [
      { name: "x", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } },
      { name: "y", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 1, 1, 1] } },
    ],
  });
  const outcome = (p: Promise<unknown>) =>
    p.then(
      () => "ok" as const,
      (e: NearhubError) => {
        assert.ok(e instanceof NearhubError, String(e));
        return e.code;
      },
    );

  before(async () => {
    natsUrl = (await nats()).url;
    dir = await tempDir();
    const models = join(dir.path, "models");
    for (const name of ["add", "secret"]) {
      await mkdir(join(models, name, "1"), { recursive: true });
      await writeFile(join(models, name, "1", "model.onnx"), addModel("FP32", 4));
      await writeFile(join(models, name, "1", "nearhub-model.json"), JSON.stringify({ max_batch_size: 8 }));
    }
    const env = serviceEnv(natsUrl, ns, dir.path, { NEARHUB_MODEL_DIR: models });
    const config = parseEnv("inference-gateway", inferenceEnv, env);
    gateway = await startInferenceGateway(config);
    // The policy owner (the audit service in a deployment) issues the tokens.
    bus = await Bus.connect({
      url: natsUrl,
      name: "owner",
      source: "test",
      names: gateway.names,
      logger: silentLogger,
    });
    owner = await Access.start({ service: "audit", bus, config, logger: silentLogger });
    const admin = await owner.authenticate(adminAuth(ns));
    for (const role of ROLES) {
      const { token } = await owner.store.createToken(
        { name: role, role, scopes: ["models/*"], ttlSeconds: 600 },
        admin,
      );
      secrets.set(role, token);
    }
    const { token } = await owner.store.createToken(
      { name: "scoped", role: "developer", scopes: ["models/add"], ttlSeconds: 600 },
      admin,
    );
    secrets.set("scoped", token);
    await eventually(async () => (gateway.access.policy.tokens.size >= 6 ? true : undefined), 5000, "the tokens");
  });

  after(async () => {
    await owner?.stop();
    await bus?.drain(1000);
    await gateway?.stop();
    await deleteNamespace(natsUrl, ns).catch(() => undefined);
    await dir?.cleanup();
  });

  test("infer, load/unload and metadata are allowed exactly for the roles that grant them", async () => {
    for (const role of ROLES) {
      const c = client(secrets.get(role));
      try {
        const can = (p: "infer" | "load" | "read") => (ROLE_PERMISSIONS[role].has(p) ? "ok" : Code.PermissionDenied);
        assert.equal(await outcome(c.modelMetadata({ name: "add" })), can("read"), `${role} metadata`);
        assert.equal(await outcome(c.modelInfer(request("add"))), can("infer"), `${role} infer`);
        assert.equal(await outcome(c.repositoryModelLoad({ modelName: "add" })), can("load"), `${role} load`);
        assert.equal(await outcome(c.repositoryModelUnload({ modelName: "add" })), can("load"), `${role} unload`);
      } finally {
        c.$close();
      }
    }
  });

  test("a denial names the permission and the model", async () => {
    const c = client(secrets.get("viewer"));
    try {
      await assert.rejects(c.modelInfer(request("add")), (e: NearhubError) =>
        /'infer' on 'models\/add' is not granted to token:[0-9a-f]{16} \(role viewer on models\/\*\)/.test(e.message),
      );
    } finally {
      c.$close();
    }
  });

  test("anonymous callers are refused; liveness and readiness stay open for probes", async () => {
    const c = client();
    try {
      assert.equal((await c.serverLive({})).live, true);
      assert.equal((await c.serverReady({})).ready, true);
      assert.equal(await outcome(c.modelInfer(request("add"))), Code.Unauthenticated);
      assert.equal((await c.repositoryIndex({})).models.length, 0, "anonymous sees no models");
    } finally {
      c.$close();
    }
  });

  test("a token scoped to models/add sees and runs only that model, over unary and streaming", async () => {
    const c = client(secrets.get("scoped"));
    try {
      assert.deepEqual(
        (await c.repositoryIndex({})).models.map((m) => m.name),
        ["add"],
      );
      assert.equal(await outcome(c.modelInfer(request("add"))), "ok");
      assert.equal(await outcome(c.modelInfer(request("secret"))), Code.PermissionDenied);
      const answers = [];
      for await (const answer of c.modelStreamInfer(
        (async function* () {
          yield { ...request("add"), id: "a" };
          yield { ...request("secret"), id: "s" };
        })(),
      ))
        answers.push(answer);
      const byId = new Map(answers.map((a) => [a.inferResponse?.id, a]));
      assert.equal(byId.get("a")?.errorMessage, "");
      assert.match(byId.get("s")?.errorMessage ?? "", /permission_denied: 'infer' on 'models\/secret'/i);
    } finally {
      c.$close();
    }
  });
});
