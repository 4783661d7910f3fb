import {
  ScalarType,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type Message,
} from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";

/** A Buffer over the encoder's fresh bytes, without copying them. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A bytes field at least this long is written by {@link encode} itself. */
export const LARGE_BYTES = 64 * 1024;

/** A message type's top-level singular bytes fields: `oneof` names the group a member is in. */
interface BytesField {
  localName: string;
  number: number;
  oneof: string | undefined;
}

const bytesFieldsOf = new WeakMap<DescMessage, BytesField[]>();

function bytesFields(schema: DescMessage): BytesField[] {
  let fields = bytesFieldsOf.get(schema);
  if (!fields) {
    fields = schema.fields
      .filter((f) => f.fieldKind === "scalar" && f.scalar === ScalarType.BYTES)
      .map((f) => ({ localName: f.localName, number: f.number, oneof: f.oneof?.localName }));
    bytesFieldsOf.set(schema, fields);
  }
  return fields;
}

function varintLength(n: number): number {
  let length = 1;
  for (; n >= 0x80; n = Math.floor(n / 0x80)) length++;
  return length;
}

function writeVarint(out: Buffer, at: number, n: number): number {
  for (; n >= 0x80; n = Math.floor(n / 0x80)) out[at++] = (n % 0x80) | 0x80;
  out[at++] = n;
  return at;
}

/**
 * The protobuf binary encoding of `message`, as one exactly sized Buffer.
 *
 * protobuf-es's writer grows its buffer by doubling from a few bytes and copies the result out:
 * a 4 MiB chunk (GetBlob, UploadChunk, PutBlob) costs a zeroed 8 MiB allocation, two copies
 * and, on a large transfer, page faults for gigabytes of fresh memory. So a message with a
 * large bytes field (plain or the set member of a oneof) is encoded without it by protobuf-es
 * and the field is appended here once: a tag, its length and the bytes, copied a single time.
 * The wire form is valid protobuf (fields may come in any order, and a field written last wins
 * for a oneof) and decodes to the same message.
 */
export function encode(schema: DescMessage, message: Message): Buffer {
  const record = message as unknown as Record<string, unknown>;
  for (const field of bytesFields(schema)) {
    let value: unknown;
    let without: Record<string, unknown>;
    if (field.oneof === undefined) {
      value = record[field.localName];
      if (!(value instanceof Uint8Array) || value.byteLength < LARGE_BYTES) continue;
      without = { ...record, [field.localName]: new Uint8Array(0) };
    } else {
      const group = record[field.oneof] as { case?: string; value?: unknown } | undefined;
      if (group?.case !== field.localName) continue;
      value = group.value;
      if (!(value instanceof Uint8Array) || value.byteLength < LARGE_BYTES) continue;
      without = { ...record, [field.oneof]: { case: undefined } };
    }
    const bytes = value;
    const rest = toBinary(schema, without as unknown as Message);
    const tag = field.number * 8 + 2;
    const out = Buffer.allocUnsafe(
      rest.byteLength + varintLength(tag) + varintLength(bytes.byteLength) + bytes.byteLength,
    );
    out.set(rest, 0);
    let at = writeVarint(out, rest.byteLength, tag);
    at = writeVarint(out, at, bytes.byteLength);
    out.set(bytes, at);
    return out;
  }
  return asBuffer(toBinary(schema, message));
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
    requestSerialize: (message: unknown) => encode(method.input, message as Message),
    requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
    responseSerialize: (message: unknown) => encode(method.output, message as Message),
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
