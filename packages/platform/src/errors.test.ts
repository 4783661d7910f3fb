import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { connect } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { z } from "zod";
import { Code, NearhubError, codeName, formatZodIssues, httpStatusOf, toGrpcStatus } from "./errors.js";

function systemError(code: string, message = `${code}: something`): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}

describe("Code", () => {
  test("has the gRPC status numbers", () => {
    assert.equal(Code.Ok, grpc.status.OK);
    assert.equal(Code.NotFound, grpc.status.NOT_FOUND);
    assert.equal(Code.Unavailable, grpc.status.UNAVAILABLE);
    assert.equal(Code.Unauthenticated, grpc.status.UNAUTHENTICATED);
    for (let n = 0; n <= 16; n++) assert.equal(toGrpcStatus(n as Code), n);
  });

  test("codeName is the lower-case snake name", () => {
    assert.equal(codeName(Code.Ok), "ok");
    assert.equal(codeName(Code.NotFound), "not_found");
    assert.equal(codeName(Code.DeadlineExceeded), "deadline_exceeded");
    assert.equal(codeName(Code.ResourceExhausted), "resource_exhausted");
    assert.equal(codeName(Code.Unauthenticated), "unauthenticated");
    assert.equal(codeName(99 as Code), "unknown");
  });
});

describe("NearhubError", () => {
  test("carries code, message and cause", () => {
    const cause = new Error("root");
    const e = new NearhubError(Code.FailedPrecondition, "mirror interval 10s is below the 60s minimum", { cause });
    assert.ok(e instanceof Error);
    assert.equal(e.name, "NearhubError");
    assert.equal(e.code, Code.FailedPrecondition);
    assert.equal(e.message, "mirror interval 10s is below the 60s minimum");
    assert.equal(e.rawMessage, e.message);
    assert.equal(e.cause, cause);
    assert.match(String(e.stack), /NearhubError: mirror interval/);
  });
});

describe("NearhubError.from", () => {
  test("returns a NearhubError unchanged", () => {
    const e = new NearhubError(Code.Aborted, "conflict");
    assert.equal(NearhubError.from(e), e);
    assert.equal(NearhubError.from(e, Code.Internal), e);
  });

  test("maps network errors to UNAVAILABLE", () => {
    for (const code of ["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ETIMEDOUT", "EPIPE"]) {
      const cause = systemError(code);
      const e = NearhubError.from(cause);
      assert.equal(e.code, Code.Unavailable, code);
      assert.equal(e.message, cause.message);
      assert.equal(e.cause, cause);
    }
  });

  test("a real refused connection becomes UNAVAILABLE", async () => {
    const error = await new Promise<Error>((resolve) => {
      // Port 1 on loopback: nothing listens there.
      const socket = connect({ host: "127.0.0.1", port: 1 });
      socket.once("error", resolve);
    });
    const e = NearhubError.from(error);
    assert.equal(e.code, Code.Unavailable);
    assert.match(e.message, /ECONNREFUSED/);
    assert.equal(e.cause, error);
  });

  test("maps file-system errors", async () => {
    const missing = await readFile("/definitely/not/here").catch((error: unknown) => error);
    const e = NearhubError.from(missing);
    assert.equal(e.code, Code.NotFound);
    assert.equal(e.cause, missing);
    assert.equal(NearhubError.from(systemError("EEXIST")).code, Code.AlreadyExists);
    assert.equal(NearhubError.from(systemError("EACCES")).code, Code.PermissionDenied);
    assert.equal(NearhubError.from(systemError("EPERM")).code, Code.PermissionDenied);
    assert.equal(NearhubError.from(systemError("ENOSPC")).code, Code.ResourceExhausted);
    assert.equal(NearhubError.from(systemError("EADDRINUSE")).code, Code.Unavailable);
  });

  test("an abort is CANCELLED and a timeout DEADLINE_EXCEEDED", () => {
    const abort = AbortSignal.abort().reason as Error;
    assert.equal(abort.name, "AbortError");
    assert.equal(NearhubError.from(abort).code, Code.Cancelled);
    assert.equal(NearhubError.from(abort).cause, abort);

    const fetchLike = Object.assign(new Error("This operation was aborted"), { name: "AbortError" });
    assert.equal(NearhubError.from(fetchLike).code, Code.Cancelled);

    const timeout = new DOMException("The operation was aborted due to timeout", "TimeoutError");
    const e = NearhubError.from(timeout);
    assert.equal(e.code, Code.DeadlineExceeded);
    assert.equal(e.message, "The operation was aborted due to timeout");
  });

  test("a ZodError is INVALID_ARGUMENT listing each field", () => {
    const schema = z.object({ url: z.url(), depth: z.number().int().min(1) });
    const parsed = schema.safeParse({ url: "nope", depth: 0 });
    assert.equal(parsed.success, false);
    const e = NearhubError.from(parsed.error);
    assert.equal(e.code, Code.InvalidArgument);
    assert.equal(e.cause, parsed.error);
    assert.match(e.message, /^url: .+; depth: .+$/);
    assert.equal(e.message, formatZodIssues(parsed.error));
  });

  test("formatZodIssues names the input itself when there is no path", () => {
    const parsed = z.string().safeParse(42);
    assert.match(formatZodIssues(parsed.error!), /^\(input\): /);
    const nested = z.object({ a: z.object({ b: z.string() }) }).safeParse({ a: { b: 1 } });
    assert.match(formatZodIssues(nested.error!), /^a\.b: /);
  });

  test("a grpc-js ServiceError keeps its status and its details as message", () => {
    const serviceError = Object.assign(new Error("5 NOT_FOUND: mirror acme/x is not defined"), {
      code: grpc.status.NOT_FOUND,
      details: "mirror acme/x is not defined",
      metadata: new grpc.Metadata(),
    });
    const e = NearhubError.from(serviceError);
    assert.equal(e.code, Code.NotFound);
    assert.equal(e.message, "mirror acme/x is not defined");
    assert.equal(e.cause, serviceError);
  });

  test("a numeric code without grpc details is not taken for a status", () => {
    const odd = Object.assign(new Error("weird"), { code: 5 });
    assert.equal(NearhubError.from(odd).code, Code.Unknown);
  });

  test("anything else takes the fallback and keeps the original as cause", () => {
    const plain = new Error("boom");
    assert.equal(NearhubError.from(plain).code, Code.Unknown);
    assert.equal(NearhubError.from(plain, Code.Internal).code, Code.Internal);
    assert.equal(NearhubError.from(plain).cause, plain);
    const unknownSystem = NearhubError.from(systemError("EWHATEVER"), Code.Internal);
    assert.equal(unknownSystem.code, Code.Internal);

    const thrownString = NearhubError.from("just a string");
    assert.equal(thrownString.code, Code.Unknown);
    assert.equal(thrownString.message, "just a string");
    assert.equal(thrownString.cause, "just a string");
    assert.equal(NearhubError.from(undefined).message, "undefined");
  });
});

describe("httpStatusOf", () => {
  test("maps each code to the HTTP status edge answers with", () => {
    const expected: Array<[Code, number]> = [
      [Code.Ok, 200],
      [Code.Cancelled, 499],
      [Code.Unknown, 500],
      [Code.InvalidArgument, 400],
      [Code.DeadlineExceeded, 504],
      [Code.NotFound, 404],
      [Code.AlreadyExists, 409],
      [Code.PermissionDenied, 403],
      [Code.ResourceExhausted, 429],
      [Code.FailedPrecondition, 412],
      [Code.Aborted, 409],
      [Code.OutOfRange, 400],
      [Code.Unimplemented, 501],
      [Code.Internal, 500],
      [Code.Unavailable, 503],
      [Code.DataLoss, 500],
      [Code.Unauthenticated, 401],
    ];
    for (const [code, status] of expected) assert.equal(httpStatusOf(code), status, codeName(code));
  });
});
