import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { EchoRequestSchema, EchoResponseSchema, EchoService } from "@nearhub/proto/echo";
import { Health } from "@nearhub/proto/health";
import { methodDefinition, methodPath, serviceDefinition } from "./rpc-definition.js";

describe("methodPath", () => {
  test("is /<package>.<Service>/<Method>", () => {
    assert.equal(methodPath(EchoService.method.echo), "/nearhub.common.v1.EchoService/Echo");
    assert.equal(methodPath(Health.method.watch), "/grpc.health.v1.Health/Watch");
  });
});

describe("methodDefinition", () => {
  test("sets the stream flags from the method kind", () => {
    const flags = (m: Parameters<typeof methodDefinition>[0]) => {
      const d = methodDefinition(m);
      return [d.requestStream, d.responseStream];
    };
    assert.deepEqual(flags(EchoService.method.echo), [false, false]);
    assert.deepEqual(flags(EchoService.method.echoServerStream), [false, true]);
    assert.deepEqual(flags(EchoService.method.echoClientStream), [true, false]);
    assert.deepEqual(flags(EchoService.method.echoBidiStream), [true, true]);
  });

  test("serializes with protobuf binary and back", () => {
    const def = methodDefinition(EchoService.method.echo);
    const request = create(EchoRequestSchema, { text: "héllo", failWithCode: 5, delayMs: 7 });
    const bytes = def.requestSerialize(request);
    assert.ok(Buffer.isBuffer(bytes));
    const back = def.requestDeserialize(bytes) as typeof request;
    assert.equal(back.text, "héllo");
    assert.equal(back.failWithCode, 5);
    assert.equal(back.delayMs, 7);

    const response = create(EchoResponseSchema, { text: "out", traceId: "abc", principal: "user:a" });
    const decoded = def.responseDeserialize(def.responseSerialize(response)) as typeof response;
    assert.equal(decoded.$typeName, "nearhub.common.v1.EchoResponse");
    assert.equal(decoded.principal, "user:a");
  });

  test("keeps the path and the local name", () => {
    const def = methodDefinition(EchoService.method.echoBidiStream);
    assert.equal(def.path, "/nearhub.common.v1.EchoService/EchoBidiStream");
    assert.equal(def.originalName, "echoBidiStream");
  });

  test("rejects bytes that are not the input message", () => {
    const def = methodDefinition(EchoService.method.echo);
    // Field 1 declared as a varint where a string is expected: not an EchoRequest.
    assert.throws(() => def.requestDeserialize(Buffer.from([0x0a, 0xff])));
  });
});

describe("serviceDefinition", () => {
  test("has one entry per method, keyed by the proto method name", () => {
    const def = serviceDefinition(EchoService);
    assert.deepEqual(Object.keys(def).sort(), ["Echo", "EchoBidiStream", "EchoClientStream", "EchoServerStream"]);
    assert.equal(def["EchoServerStream"]?.path, "/nearhub.common.v1.EchoService/EchoServerStream");
  });
});
