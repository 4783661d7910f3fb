import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Bus } from "../bus.js";
import { silentLogger } from "../logger.js";
import { Names } from "../names.js";
import { Policy } from "./policy.js";
import { PolicyStore } from "./policy-store.js";

const NATS_URL = process.env["NATS_URL"] || "nats://127.0.0.1:4222";

describe("PolicyStore", () => {
  const namespace = `t${randomBytes(5).toString("hex")}`;
  let bus: Bus;
  before(async () => {
    bus = await Bus.connect({
      url: NATS_URL,
      name: "policy-store-test",
      source: "test",
      names: new Names(namespace),
      logger: silentLogger,
    });
  });
  after(async () => {
    for await (const info of bus.jsm.streams.list())
      if (info.config.name.startsWith(`KV_${namespace}_`)) await bus.jsm.streams.delete(info.config.name);
    await bus.drain(1000);
  });

  // An empty bucket lets open() return before the watch exists; a service whose set-up then fails
  // stops at once. That stop used to wait forever on a watch nobody stopped.
  test("stopping right after opening an empty bucket ends the watch", { timeout: 60_000 }, async () => {
    for (let i = 0; i < 20; i++) {
      const store = await PolicyStore.open(bus, new Policy([]), silentLogger);
      await store.stop();
    }
    const status = await (await bus.kv(bus.names.bucket("rbac"), { history: 5 })).status();
    assert.equal(status.values, 0, "nothing was written by opening and stopping");
  });
});
