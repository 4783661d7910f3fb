import { z } from "zod";
import { authEnv } from "./auth/config.js";

/** Thrown when the environment does not parse: one message lists every problem. */
export class ConfigError extends Error {
  override name = "ConfigError";
  /** One entry per bad or missing variable. */
  readonly problems: string[];

  constructor(service: string, problems: string[]) {
    super(
      `${service}: invalid configuration (${problems.length} problem${problems.length === 1 ? "" : "s"}):\n` +
        problems.map((p) => `  - ${p}`).join("\n"),
    );
    this.problems = problems;
  }
}

/** A TCP port; 0 asks the OS for a free one. */
export const port = (fallback: number) =>
  z.coerce
    .number({ error: "must be a whole number from 0 to 65535" })
    .int("must be a whole number from 0 to 65535")
    .min(0, "must be a whole number from 0 to 65535")
    .max(65535, "must be a whole number from 0 to 65535")
    .default(fallback);

const natsServer = /^(nats|tls|ws|wss):\/\/[^\s/]+(:\d{1,5})?\/?$|^[^\s/:]+:\d{1,5}$/;

/** Variables every service reads. */
export const commonEnv = {
  NATS_URL: z
    .string()
    .default("nats://127.0.0.1:4222")
    .refine(
      (v) => v.split(",").every((s) => natsServer.test(s.trim())),
      "must be nats://host:port (comma-separated for a cluster), e.g. nats://127.0.0.1:4222",
    ),
  /** Isolates subjects, streams and buckets; tests set a unique one, production leaves it empty. */
  NEARHUB_NAMESPACE: z
    .string()
    .regex(
      /^([a-z][a-z0-9]{0,30})?$/,
      "must be empty or lower-case letters and digits, starting with a letter (at most 31)",
    )
    .default(""),
  NEARHUB_BIND_HOST: z
    .string()
    .min(1, "must be an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
    .default("127.0.0.1"),
  NEARHUB_METRICS_PORT: port(0),
  NEARHUB_DATA_DIR: z.string().min(1, "must be a folder path").default(".nearhub"),
  LOG_LEVEL: z
    .enum(["debug", "info", "warn", "error", "silent"], { error: "must be one of debug, info, warn, error, silent" })
    .default("info"),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.url({ error: "must be an http(s) URL such as http://jaeger:4318" }).optional(),
  /** nats-server's monitoring URL (http://host:8222), used to check its fsync setting. */
  NEARHUB_NATS_MONITOR_URL: z.url({ error: "must be an http(s) URL such as http://nats:8222" }).optional(),
  /** Copies JetStream keeps of every stream and bucket: 1 on one server, 3 on a cluster. */
  NEARHUB_STREAM_REPLICAS: z.coerce
    .number({ error: "must be 1, 3 or 5 (the number of NATS servers that keep each stream)" })
    .int("must be 1, 3 or 5 (the number of NATS servers that keep each stream)")
    .min(1, "must be 1, 3 or 5 (the number of NATS servers that keep each stream)")
    .max(5, "must be 1, 3 or 5 (the number of NATS servers that keep each stream)")
    .default(1),
  /** How long to keep trying to reach NATS at start-up before giving up. */
  NEARHUB_NATS_CONNECT_TIMEOUT_MS: z.coerce
    .number({ error: "must be whole milliseconds from 100 to 600000, e.g. 15000" })
    .int()
    .min(100)
    .max(600_000)
    .default(15_000),
  NEARHUB_SHUTDOWN_TIMEOUT_MS: z.coerce
    .number({ error: "must be whole milliseconds from 100 to 120000, e.g. 5000" })
    .int()
    .min(100)
    .max(120_000)
    .default(4000),
  /** PEM certificate (chain) every listener of the service presents; plain text when unset. */
  NEARHUB_TLS_CERT: z.string().min(1, "must be the path of a PEM certificate file").optional(),
  /** PEM private key of NEARHUB_TLS_CERT. */
  NEARHUB_TLS_KEY: z.string().min(1, "must be the path of a PEM private key file").optional(),
  /** PEM CA bundle that verifies other services (outgoing calls) and client certificates (mutual TLS). */
  NEARHUB_TLS_CA: z.string().min(1, "must be the path of a PEM CA bundle").optional(),
  /** Mutual TLS on this service's listeners: none, request (verified when presented) or require. */
  NEARHUB_TLS_CLIENT_AUTH: z
    .enum(["none", "request", "require"], { error: "must be none, request or require" })
    .default("none"),
  /** Calls to other nearhub services: tls or plain; by default tls when NEARHUB_TLS_CERT or NEARHUB_TLS_CA is set. */
  NEARHUB_TLS_SERVICE_CALLS: z.enum(["tls", "plain"], { error: "must be tls or plain" }).optional(),
  ...authEnv,
} as const;

/** The parsed common variables. */
export type CommonConfig = z.infer<z.ZodObject<typeof commonEnv>>;

/**
 * Parses an environment once with a zod object schema. Every problem is collected and thrown
 * together as a {@link ConfigError} naming the variable, what is wrong and the accepted form.
 */
export function parseEnv<T extends z.ZodRawShape>(
  service: string,
  shape: T,
  env: Record<string, string | undefined> = process.env,
): z.infer<z.ZodObject<T>> {
  // Empty strings count as unset, as docker-compose writes `VAR=` for "no value".
  const cleaned: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined && value !== "") cleaned[key] = value;
  }
  const result = z.object(shape).safeParse(cleaned);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const name = issue.path.join(".");
    const got = cleaned[name];
    // A secret's value never reaches a message (they end up in logs).
    const secret = /TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL/i.test(name);
    const shown =
      got === undefined
        ? "unset"
        : secret
          ? `got ${got.length} characters, not shown`
          : `got ${JSON.stringify(got.length > 80 ? `${got.slice(0, 80)}…` : got)}`;
    return `${name} ${issue.message} (${shown})`;
  });
  throw new ConfigError(service, problems);
}
