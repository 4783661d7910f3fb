import type { Bus, Logger } from "@nearhub/platform";

type Kv = Awaited<ReturnType<Bus["kv"]>>;

/** The KV bucket where gateways (and other KServe v2 servers) announce themselves. */
export const BACKENDS_BUCKET = "inference-backends";

function keyOf(address: string): string {
  return address.replace(/[^A-Za-z0-9_-]/g, "_");
}

/**
 * Registration of inference backends through a KV bucket whose entries expire: a backend puts
 * its address every third of the TTL (a heartbeat) and deletes it when it stops; a gateway
 * that routes to remotes reads the live entries. A crashed backend disappears when its entry
 * expires.
 */
export class BackendRegistry {
  private timer: NodeJS.Timeout | undefined;
  private advertised: string | undefined;

  constructor(
    private readonly kv: Kv,
    private readonly ttlMs: number,
    private readonly logger: Logger,
  ) {}

  /** Opens the bucket (creating it with the TTL) on the service's bus. */
  static async open(bus: Bus, ttlMs: number, logger: Logger): Promise<BackendRegistry> {
    return new BackendRegistry(await bus.kv(bus.names.bucket(BACKENDS_BUCKET), { ttlMs }), ttlMs, logger);
  }

  /** Starts the heartbeat for `address` (host:port). */
  async advertise(address: string): Promise<void> {
    this.advertised = address;
    const beat = async () => {
      await this.kv.put(keyOf(address), JSON.stringify({ address, at: new Date().toISOString() }));
    };
    await beat();
    const tick = () => {
      this.timer = setTimeout(
        () =>
          void beat()
            .catch((error: unknown) => this.logger.warn("backend heartbeat failed", { error }))
            .finally(tick),
        Math.max(100, Math.floor(this.ttlMs / 3)),
      );
      this.timer.unref();
    };
    tick();
  }

  /** Addresses of the backends whose heartbeat is live. */
  async live(): Promise<string[]> {
    const out: string[] = [];
    for await (const key of await this.kv.keys()) {
      const entry = await this.kv.get(key);
      if (!entry || entry.operation !== "PUT") continue;
      const value = entry.json<{ address?: unknown }>();
      if (typeof value.address === "string") out.push(value.address);
    }
    return out;
  }

  /** Stops the heartbeat and removes the registration. */
  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    if (this.advertised) await this.kv.delete(keyOf(this.advertised));
  }
}
