import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { Metadata } from "@grpc/grpc-js";
import type { Permission } from "./auth/permissions.js";
import type { Logger } from "./logger.js";

/** Who is calling: filled in by the server's authentication hook. */
export interface Principal {
  /** `user:alice`, `token:3f2a…`, `service:sync`, or `anonymous`. */
  subject: string;
  /** Groups and roles the subject has, when the hook knows them. */
  groups: string[];
  /** How the caller proved who it is; absent means not authenticated (tests, defaults). */
  method?: "token" | "oidc" | "ssh" | "service" | "anonymous";
  /** The service that forwarded the call on the caller's behalf, e.g. `edge`. */
  via?: string;
}

/** What a server handler knows about its call. */
export interface CallContext {
  /** `nearhub.sync.v1.SyncService/AddMirror`. */
  readonly method: string;
  readonly service: string;
  readonly peer: string;
  readonly metadata: Metadata;
  /** Absent when the caller set no deadline. */
  readonly deadline: Date | undefined;
  /** Aborted when the client cancels or the deadline passes: stop work and return. */
  readonly signal: AbortSignal;
  /**
   * Whether the client cancelled or the deadline passed, read without creating `signal` (an
   * AbortSignal costs microseconds per call); for polling at a natural checkpoint.
   */
  readonly aborted: boolean;
  /** Set by the authentication hook before the handler runs. */
  principal: Principal;
  readonly logger: Logger;
  /**
   * Refuses the call (PERMISSION_DENIED, or UNAUTHENTICATED for anonymous callers, audited)
   * unless its principal may do `permission` on `resource`.
   */
  authorize(permission: Permission, resource: string): Promise<void>;
  /** Whether the principal may do `permission` on `resource` (no audit; for filtering lists). */
  can(permission: Permission, resource: string): boolean;
}

type Shape<K extends string, I extends DescMessage, O extends DescMessage> = { methodKind: K; input: I; output: O };

/** The server-side implementation of one method, by its kind. */
export type MethodImpl<M> =
  M extends Shape<"unary", infer I, infer O>
    ? (request: MessageShape<I>, ctx: CallContext) => Promise<MessageInitShape<O>>
    : M extends Shape<"server_streaming", infer I, infer O>
      ? (request: MessageShape<I>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
      : M extends Shape<"client_streaming", infer I, infer O>
        ? (requests: AsyncIterable<MessageShape<I>>, ctx: CallContext) => Promise<MessageInitShape<O>>
        : M extends Shape<"bidi_streaming", infer I, infer O>
          ? (requests: AsyncIterable<MessageShape<I>>, ctx: CallContext) => AsyncIterable<MessageInitShape<O>>
          : never;

/** A full implementation of a protobuf-es service: one handler per method, typed by its kind. */
export type ServiceImpl<S extends DescService> = {
  [K in keyof S["method"]]: MethodImpl<S["method"][K]>;
};

/** Per-call client options. */
export interface CallOptions {
  /** Overrides the client's default deadline for this call. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Extra request metadata, e.g. `authorization`. */
  metadata?: Record<string, string>;
}

/** The client-side stub of one method, by its kind. */
export type ClientMethod<M> =
  M extends Shape<"unary", infer I, infer O>
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : M extends Shape<"server_streaming", infer I, infer O>
      ? (request: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
      : M extends Shape<"client_streaming", infer I, infer O>
        ? (requests: AsyncIterable<MessageInitShape<I>>, options?: CallOptions) => Promise<MessageShape<O>>
        : M extends Shape<"bidi_streaming", infer I, infer O>
          ? (requests: AsyncIterable<MessageInitShape<I>>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
          : never;

/** A typed client of a protobuf-es service; `$close()` releases its channel. */
export type Client<S extends DescService> = {
  [K in keyof S["method"]]: ClientMethod<S["method"][K]>;
} & { $close(): void };
