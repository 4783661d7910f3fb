import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { EchoRequestSchema, EchoResponseSchema, EchoService } from "@nearhub/proto/echo";
import { Health } from "@nearhub/proto/health";
import {
  GetBlobResponseSchema,
  PutBlobRequestSchema,
  StorageService,
  UploadChunkRequestSchema,
} from "@nearhub/proto/storage";
import { LARGE_BYTES, encode, methodDefinition, methodPath, serviceDefinition } from "./rpc-definition.js";

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

describe("encode", () => {
  const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) % 251);
  const view = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const same = (a: Uint8Array, b: Uint8Array, what = "") => assert.ok(view(a).equals(view(b)), what);

  test("a large bytes field is written once, byte for byte as protobuf-es writes it", () => {
    for (const size of [LARGE_BYTES - 1, LARGE_BYTES, 4 * 1024 * 1024 - 1024, 5 * 1024 * 1024 + 3]) {
      const response = create(GetBlobResponseSchema, { chunk: bytes(size, 7) });
      const out = encode(GetBlobResponseSchema, response);
      assert.ok(Buffer.isBuffer(out));
      same(out, toBinary(GetBlobResponseSchema, response), `size ${size}`);
      same(fromBinary(GetBlobResponseSchema, out).chunk, response.chunk, `size ${size}`);
    }
  });

  test("the set member of a oneof, and the other member or none, encode as protobuf-es does", () => {
    const messages = [
      create(UploadChunkRequestSchema, { part: { case: "data", value: bytes(300_000, 3) } }),
      create(UploadChunkRequestSchema, { part: { case: "data", value: bytes(10, 3) } }),
      create(UploadChunkRequestSchema, { part: { case: "data", value: new Uint8Array(0) } }),
      create(UploadChunkRequestSchema, {
        part: { case: "header", value: { sessionId: "s", index: 3, sha256: "a".repeat(64) } },
      }),
      create(UploadChunkRequestSchema, {}),
    ];
    for (const message of messages) {
      const out = encode(UploadChunkRequestSchema, message);
      same(out, toBinary(UploadChunkRequestSchema, message));
      const back = fromBinary(UploadChunkRequestSchema, out);
      assert.equal(back.part.case, message.part.case);
      if (back.part.case === "data" && message.part.case === "data") same(back.part.value, message.part.value);
      if (back.part.case === "header") assert.deepEqual(back.part.value, message.part.value);
    }
  });

  test("the message given is left as it was", () => {
    const chunk = bytes(LARGE_BYTES * 2, 1);
    const message = create(PutBlobRequestSchema, { part: { case: "chunk", value: chunk } });
    encode(PutBlobRequestSchema, message);
    assert.equal(message.part.case, "chunk");
    assert.equal(message.part.value, chunk);
  });

  test("methodDefinition's serializers use it: a 4 MiB chunk round-trips through the definition", () => {
    const def = methodDefinition(StorageService.method.getBlob);
    const response = create(GetBlobResponseSchema, { chunk: bytes(4 * 1024 * 1024 - 1024, 9) });
    const decoded = def.responseDeserialize(def.responseSerialize(response)) as typeof response;
    same(decoded.chunk, response.chunk);
  });
});
