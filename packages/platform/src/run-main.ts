import type { z } from "zod";
import { ConfigError, parseEnv, type CommonConfig, type commonEnv } from "./config.js";
import { startTelemetry } from "./telemetry.js";
import { NearhubError } from "./errors.js";

/** Something `runMain` can stop. */
export interface Stoppable {
  stop(): Promise<void>;
}

/**
 * The body of every service's `main.ts`: start, then stop on SIGINT/SIGTERM and exit 0. A
 * start-up failure (bad configuration, unreachable NATS, a taken port) prints what is wrong
 * and exits 1; a second signal exits at once.
 */
export function runMain(name: string, start: () => Promise<Stoppable>): void {
  let service: Stoppable | undefined;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      process.stderr.write(`${name}: second ${signal}, exiting now\n`);
      process.exit(130);
    }
    stopping = true;
    const hardStop = setTimeout(() => {
      process.stderr.write(`${name}: did not stop within 10 s, exiting\n`);
      process.exit(1);
    }, 10_000);
    hardStop.unref();
    // Still starting: exiting now would skip stop(); the start handler stops it once it is up.
    if (!service) return;
    service.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`${name}: error while stopping: ${(error as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  // Started by `nearhub up` with an IPC channel: when the supervisor dies, stop too.
  if (process.send) process.once("disconnect", () => onSignal("SIGTERM"));
  start().then(
    (s) => {
      service = s;
      if (stopping) void s.stop().then(() => process.exit(0));
    },
    (error: unknown) => {
      if (error instanceof ConfigError) {
        process.stderr.write(`${error.message}\n`);
      } else if (error instanceof NearhubError) {
        process.stderr.write(`${name}: cannot start: ${error.rawMessage}\n`);
      } else {
        process.stderr.write(`${name}: cannot start: ${(error as Error)?.stack ?? String(error)}\n`);
      }
      process.exit(1);
    },
  );
}

/**
 * `runMain` for a service: parse its environment (failing with every problem at once), start
 * telemetry, start the service; on stop, flush spans after the service has stopped.
 */
export function runServiceMain<T extends typeof commonEnv & z.ZodRawShape>(
  name: string,
  shape: T,
  start: (config: z.infer<z.ZodObject<T>>) => Promise<Stoppable>,
): void {
  runMain(name, async () => {
    const config = parseEnv(name, shape);
    const common = config as unknown as CommonConfig;
    const telemetry = startTelemetry({
      serviceName: `nearhub-${name}`,
      otlpEndpoint: common.OTEL_EXPORTER_OTLP_ENDPOINT,
    });
    try {
      const service = await start(config);
      return {
        stop: async () => {
          await service.stop();
          await telemetry.shutdown();
        },
      };
    } catch (error) {
      await telemetry.shutdown();
      throw error;
    }
  });
}
