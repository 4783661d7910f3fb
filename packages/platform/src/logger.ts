import { trace } from "@opentelemetry/api";
import { pino, type DestinationStream, type Level } from "pino";

/** The narrow logging interface every nearhub component takes. */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
  /** A logger whose lines carry these fields too (e.g. `component`). */
  child(fields: Record<string, unknown>): Logger;
}

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  service: string;
  level?: Level | "silent";
  /** Where lines go; stdout by default. */
  destination?: DestinationStream;
}

/**
 * A pino JSON logger: every line has `service`, `component` (when a child sets it) and, inside
 * a span, `trace_id` and `span_id` so logs join traces.
 */
export function createLogger(options: LoggerOptions): Logger {
  const base = pino(
    {
      level: options.level ?? "info",
      base: { service: options.service },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin() {
        const span = trace.getActiveSpan();
        if (!span) return {};
        const ctx = span.spanContext();
        return { trace_id: ctx.traceId, span_id: ctx.spanId };
      },
    },
    options.destination ?? pino.destination({ fd: 1, sync: false }),
  );
  return wrap(base);
}

function wrap(p: pino.Logger): Logger {
  const at = (level: "debug" | "info" | "warn" | "error") => (message: string, fields?: Record<string, unknown>) => {
    if (fields) p[level](serializeErrors(fields), message);
    else p[level](message);
  };
  return {
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: (fields) => wrap(p.child(fields)),
  };
}

function serializeErrors(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    out[key] = value instanceof Error ? pino.stdSerializers.err(value) : value;
  }
  return out;
}

/** A logger that drops everything, for tests and tools that must stay quiet. */
export const silentLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silentLogger,
};
