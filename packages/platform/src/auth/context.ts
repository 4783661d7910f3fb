import { AsyncLocalStorage } from "node:async_hooks";
import type { Principal } from "../rpc-types.js";

const current = new AsyncLocalStorage<Principal>();

/**
 * Runs `fn` on behalf of `principal`: gRPC calls a service makes inside it carry that
 * principal's identity to the next service (see `Access.clientMetadata`).
 */
export function runAs<T>(principal: Principal, fn: () => T): T {
  return current.run(principal, fn);
}

/** The principal the current request runs for, if any. */
export function currentPrincipal(): Principal | undefined {
  return current.getStore();
}

const self: Principal = { subject: "service:self", groups: [], method: "service" };

/**
 * Runs `fn` as this service itself: gRPC calls inside it carry the service's own identity (for
 * work the service does for everyone, such as a cache fill or a verified webhook).
 */
export function asService<T>(fn: () => T): T {
  return current.run(self, fn);
}
