import { fromBinary, toBinary, type DescMethod, type DescService, type Message } from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";

/** A Buffer over the encoder's fresh bytes, without copying them. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** `/package.Service/Method`, the HTTP/2 path gRPC uses. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** One grpc-js method definition with protobuf binary serialization from protobuf-es. */
export function methodDefinition(method: DescMethod): MethodDefinition<unknown, unknown> {
  const kind = method.methodKind;
  return {
    path: methodPath(method),
    requestStream: kind === "client_streaming" || kind === "bidi_streaming",
    responseStream: kind === "server_streaming" || kind === "bidi_streaming",
    requestSerialize: (message: unknown) => asBuffer(toBinary(method.input, message as Message)),
    requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
    responseSerialize: (message: unknown) => asBuffer(toBinary(method.output, message as Message)),
    responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
    originalName: method.localName,
  };
}

/** Turns a protobuf-es service descriptor into a grpc-js service definition. */
export function serviceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.name] = methodDefinition(method);
  }
  return definition;
}
