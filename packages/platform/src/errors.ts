import { type status as GrpcStatus } from "@grpc/grpc-js";
import { ZodError } from "zod";

/** The closed set of error codes nearhub uses everywhere: the gRPC status codes. */
export enum Code {
  Ok = 0,
  Cancelled = 1,
  Unknown = 2,
  InvalidArgument = 3,
  DeadlineExceeded = 4,
  NotFound = 5,
  AlreadyExists = 6,
  PermissionDenied = 7,
  ResourceExhausted = 8,
  FailedPrecondition = 9,
  Aborted = 10,
  OutOfRange = 11,
  Unimplemented = 12,
  Internal = 13,
  Unavailable = 14,
  DataLoss = 15,
  Unauthenticated = 16,
}

/** The lower-case snake name of a code, as grpc-status documents it (`not_found`). */
export function codeName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** The Node.js system error codes that mean "the other side is not there right now". */
const NETWORK_UNAVAILABLE = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE",
  "ETIMEDOUT",
  "ECONNABORTED",
]);

const SYSTEM_CODES: Record<string, Code> = {
  ENOENT: Code.NotFound,
  EEXIST: Code.AlreadyExists,
  EACCES: Code.PermissionDenied,
  EPERM: Code.PermissionDenied,
  ENOSPC: Code.ResourceExhausted,
  EMFILE: Code.ResourceExhausted,
  EADDRINUSE: Code.Unavailable,
};

/**
 * The one error class of nearhub. Thrown by services and clients alike; a gRPC status at the
 * edge of a service, a typed domain error inside it. Its message says what was wrong and what
 * to do about it.
 */
export class NearhubError extends Error {
  override name = "NearhubError";
  /** The status code, which decides the gRPC status and the HTTP status. */
  readonly code: Code;
  /** The message without the code prefix. */
  readonly rawMessage: string;

  constructor(code: Code, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.rawMessage = message;
  }

  /**
   * Turns anything thrown into a NearhubError, keeping the original as `cause`. Network errors
   * become UNAVAILABLE, aborts CANCELLED, timeouts DEADLINE_EXCEEDED, validation errors
   * INVALID_ARGUMENT, gRPC service errors keep their status.
   */
  static from(reason: unknown, fallback: Code = Code.Unknown): NearhubError {
    if (reason instanceof NearhubError) return reason;
    if (reason instanceof ZodError) {
      return new NearhubError(Code.InvalidArgument, formatZodIssues(reason), { cause: reason });
    }
    if (reason instanceof Error) {
      const grpcCode = (reason as { code?: unknown }).code;
      const details = (reason as { details?: unknown }).details;
      if (typeof grpcCode === "number" && grpcCode in Code && typeof details === "string") {
        return new NearhubError(grpcCode, details, { cause: reason });
      }
      if (typeof grpcCode === "string") {
        if (NETWORK_UNAVAILABLE.has(grpcCode)) {
          return new NearhubError(Code.Unavailable, reason.message, { cause: reason });
        }
        const mapped = SYSTEM_CODES[grpcCode];
        if (mapped !== undefined) return new NearhubError(mapped, reason.message, { cause: reason });
      }
      if (reason.name === "AbortError") {
        return new NearhubError(Code.Cancelled, reason.message, { cause: reason });
      }
      if (reason.name === "TimeoutError") {
        return new NearhubError(Code.DeadlineExceeded, reason.message, { cause: reason });
      }
      return new NearhubError(fallback, reason.message, { cause: reason });
    }
    return new NearhubError(fallback, String(reason), { cause: reason });
  }
}

/** The HTTP status that stands for a code, for edge's JSON answers. */
export function httpStatusOf(code: Code): number {
  switch (code) {
    case Code.Ok:
      return 200;
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return 400;
    case Code.Unauthenticated:
      return 401;
    case Code.PermissionDenied:
      return 403;
    case Code.NotFound:
      return 404;
    case Code.AlreadyExists:
    case Code.Aborted:
      return 409;
    case Code.FailedPrecondition:
      return 412;
    case Code.ResourceExhausted:
      return 429;
    case Code.Cancelled:
      return 499;
    case Code.Unimplemented:
      return 501;
    case Code.Unavailable:
      return 503;
    case Code.DeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

/** One line per problem: `field: what is wrong`. */
export function formatZodIssues(error: ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join(".") : "(input)"}: ${issue.message}`)
    .join("; ");
}

/** The grpc-js status number for a code (the same numbers, named for readers). */
export function toGrpcStatus(code: Code): GrpcStatus {
  return code as number;
}
