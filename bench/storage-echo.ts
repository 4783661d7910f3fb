/**
 * The storage bench's transport baseline, in a process of its own: nearhub.storage.v1 served by
 * bare grpc-js with the same protobuf serialization and HTTP/2 windows as nearhub's RpcServer,
 * keeping blobs in memory: no hashing, no disk, no events, no auth. The bench's clients
 * (`uploadFile`, `downloadBlob`, 4 KiB PutBlob + GetBlob) run against it unchanged, so the
 * storage service's figures can be read as a share of what gRPC alone moves on this machine.
 * With STORAGE_ECHO_PRELOAD (the bench's large file), that blob is read into memory at start
 * and chunked uploads of it are copied into that buffer: memory the process has already touched,
 * so the figure is the transport's and one copy's, not the kernel's handing out fresh pages (a
 * new gigabyte costs more CPU in page faults than gRPC spends moving it).
 * Sends `{type: "ready", port}` over IPC, then serves until it gets `{type: "stop"}`.
 */
import { createHash, randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { serviceDefinition, widenFlowControlWindows } from "@nearhub/platform";
import {
  CompleteUploadResponseSchema,
  GetBlobResponseSchema,
  HasBlobsResponseSchema,
  PutBlobResponseSchema,
  StartUploadResponseSchema,
  StorageService,
  UploadChunkResponseSchema,
  type GetBlobRequest,
  type PutBlobRequest,
  type StartUploadRequest,
  type UploadChunkRequest,
} from "@nearhub/proto/storage";
import { tuneHeapForStreaming } from "@nearhub/storage";

/** Bytes per GetBlob message, as the storage service sends them. */
const MESSAGE = 4 * 1024 * 1024 - 1024;

type Call<Req> = grpc.ServerReadableStream<Req, unknown>;

export type EchoMessage = { type: "ready"; port: number } | { type: "stopped" };

async function serve(): Promise<void> {
  tuneHeapForStreaming();
  const blobs = new Map<string, Buffer>();
  const sessions = new Map<string, { sha256: string; chunkSize: number; bytes: Buffer }>();
  const preloadPath = process.env["STORAGE_ECHO_PRELOAD"];
  const preloaded = preloadPath ? await readFile(preloadPath) : undefined;
  const preloadedSha = preloaded ? createHash("sha256").update(preloaded).digest("hex") : undefined;
  if (preloaded && preloadedSha) blobs.set(preloadedSha, preloaded);
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    "grpc.enable_channelz": 0,
  });
  widenFlowControlWindows(server);
  const unimplemented = (_call: unknown, callback: grpc.sendUnaryData<unknown>) =>
    callback({ code: grpc.status.UNIMPLEMENTED, details: "not in the echo" });
  const handlers: Record<string, unknown> = {};
  for (const method of StorageService.methods) handlers[method.name] = unimplemented;
  Object.assign(handlers, {
    HasBlobs: (_call: unknown, callback: grpc.sendUnaryData<unknown>) =>
      callback(null, create(HasBlobsResponseSchema, {})),
    PutBlob: (call: Call<PutBlobRequest>, callback: grpc.sendUnaryData<unknown>) => {
      let sha256 = "";
      const parts: Buffer[] = [];
      call.on("data", (m: PutBlobRequest) => {
        if (m.part.case === "header") sha256 = m.part.value.sha256;
        else if (m.part.case === "chunk") parts.push(Buffer.from(m.part.value));
      });
      call.on("end", () => {
        const bytes = Buffer.concat(parts);
        blobs.set(sha256, bytes);
        callback(
          null,
          create(PutBlobResponseSchema, { blob: { sha256, size: BigInt(bytes.byteLength) }, created: true }),
        );
      });
    },
    GetBlob: (call: grpc.ServerWritableStream<GetBlobRequest, unknown>) => {
      const blob = blobs.get(call.request.sha256);
      if (!blob) return call.destroy(Object.assign(new Error("not stored"), { code: grpc.status.NOT_FOUND }));
      const offset = Number(call.request.offset);
      const end = call.request.length === 0n ? blob.byteLength : offset + Number(call.request.length);
      let at = offset;
      const pump = () => {
        while (at < end) {
          const piece = blob.subarray(at, Math.min(end, at + MESSAGE));
          at += piece.byteLength;
          if (!call.write(create(GetBlobResponseSchema, { chunk: piece }))) return void call.once("drain", pump);
        }
        call.end();
      };
      pump();
    },
    StartUpload: (call: grpc.ServerUnaryCall<StartUploadRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      const size = Number(call.request.size);
      const chunkSize = Number(call.request.chunkSize) || 64 * 1024 * 1024;
      const sessionId = randomUUID();
      const bytes =
        call.request.sha256 === preloadedSha && preloaded?.byteLength === size
          ? preloaded
          : Buffer.allocUnsafeSlow(size);
      sessions.set(sessionId, { sha256: call.request.sha256, chunkSize, bytes });
      callback(
        null,
        create(StartUploadResponseSchema, {
          session: {
            sessionId,
            sha256: call.request.sha256,
            size: BigInt(size),
            chunkSize: BigInt(chunkSize),
            chunkCount: Math.ceil(size / chunkSize),
          },
        }),
      );
    },
    UploadChunk: (call: Call<UploadChunkRequest>, callback: grpc.sendUnaryData<unknown>) => {
      let session: { chunkSize: number; bytes: Buffer } | undefined;
      let index = 0;
      let at = 0;
      call.on("data", (m: UploadChunkRequest) => {
        if (m.part.case === "header") {
          session = sessions.get(m.part.value.sessionId);
          index = m.part.value.index;
          at = index * (session?.chunkSize ?? 0);
        } else if (m.part.case === "data" && session) {
          session.bytes.set(m.part.value, at);
          at += m.part.value.byteLength;
        }
      });
      call.on("end", () => callback(null, create(UploadChunkResponseSchema, { index, stored: true })));
    },
    CompleteUpload: (
      call: grpc.ServerUnaryCall<{ sessionId: string }, unknown>,
      callback: grpc.sendUnaryData<unknown>,
    ) => {
      const session = sessions.get(call.request.sessionId);
      if (!session) return callback({ code: grpc.status.NOT_FOUND, details: "no such session" });
      sessions.delete(call.request.sessionId);
      blobs.set(session.sha256, session.bytes);
      callback(
        null,
        create(CompleteUploadResponseSchema, {
          blob: { sha256: session.sha256, size: BigInt(session.bytes.byteLength) },
          created: true,
        }),
      );
    },
  });
  server.addService(serviceDefinition(StorageService), handlers as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  process.on("message", (m: { type: string }) => {
    if (m.type !== "stop") return;
    server.forceShutdown();
    process.send?.({ type: "stopped" } satisfies EchoMessage, () => process.exit(0));
  });
  process.send?.({ type: "ready", port } satisfies EchoMessage);
}

await serve();
