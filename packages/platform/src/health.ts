import { on } from "node:events";
import { EventEmitter } from "node:events";
import { type Health, HealthCheckResponse_ServingStatus as Status } from "@nearhub/proto/health";
import { Code, NearhubError } from "./errors.js";
import type { ServiceImpl } from "./rpc-types.js";

export { Status as ServingStatus };

/**
 * The serving status of a process and of each named gRPC service in it. Starts NOT_SERVING;
 * the service host sets SERVING once every dependency (NATS, streams, buckets, backend) is
 * ready, and NOT_SERVING again while shutting down.
 */
export class HealthReporter {
  private readonly statuses = new Map<string, Status>();
  private readonly changes = new EventEmitter();

  constructor(services: string[] = []) {
    this.statuses.set("", Status.NOT_SERVING);
    for (const s of services) this.statuses.set(s, Status.NOT_SERVING);
    this.changes.setMaxListeners(0);
  }

  /** Sets the status of the whole server (`""`) and every registered service. */
  setAll(status: Status): void {
    for (const name of this.statuses.keys()) this.set(name, status);
  }

  /** Sets one service's status; watchers are told. */
  set(service: string, status: Status): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    this.changes.emit("change", service, status);
  }

  /** The status of the server (`""`) or of a named service; undefined when unknown. */
  get(service = ""): Status | undefined {
    return this.statuses.get(service);
  }

  /** The grpc.health.v1.Health implementation. */
  implementation(): ServiceImpl<typeof Health> {
    return {
      check: async (request) => {
        const status = this.statuses.get(request.service);
        if (status === undefined) {
          throw new NearhubError(Code.NotFound, `unknown service ${JSON.stringify(request.service)}`);
        }
        return { status };
      },
      watch: (request, ctx) => this.watch(request.service, ctx.signal),
    };
  }

  private async *watch(service: string, signal: AbortSignal): AsyncIterable<{ status: Status }> {
    const current = () => this.statuses.get(service) ?? Status.SERVICE_UNKNOWN;
    // Listen before the first yield: a change made before the caller pulls again is queued,
    // not lost.
    const changes = on(this.changes, "change", { signal }) as AsyncIterableIterator<[string, Status]>;
    let last = current();
    try {
      yield { status: last };
      for await (const [changed] of changes) {
        if (changed !== service) continue;
        const now = current();
        if (now !== last) {
          last = now;
          yield { status: now };
        }
      }
    } catch (error) {
      if (!signal.aborted) throw error;
    } finally {
      await changes.return?.();
    }
  }
}
