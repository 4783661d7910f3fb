import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import {
  create,
  fromJsonString,
  toJsonString,
  type DescMessage,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type ConsumerConfig,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type PubAck,
  type StreamConfig,
} from "@nats-io/jetstream";
import { Kvm, type KV, type KvOptions } from "@nats-io/kv";
import { headers as createHeaders, nanos, type MsgHdrs, type NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { Code, NearhubError } from "./errors.js";
import type { EventDef } from "@nearhub/proto/events";
import type { Logger } from "./logger.js";
import type { ServiceMetrics } from "./metrics.js";
import { type Names } from "./names.js";
import { extractFromHeaders, injectIntoHeaders } from "./trace-context.js";

/**
 * A stream a service declares: created at start-up, updated when its settings change; with
 * `createOnly`, created when missing but never changed (another service owns its settings).
 */
export type StreamDecl = Partial<StreamConfig> & { name: string; subjects: string[]; createOnly?: boolean };

/** A KV bucket a service owns. */
export interface KvDecl {
  bucket: string;
  history?: number;
  /** Entry time-to-live, e.g. for heartbeats and upload sessions. */
  ttlMs?: number;
}

/** A durable pull consumer with explicit acks, bounded redelivery and a dead-letter subject. */
export interface ConsumerDecl {
  stream: string;
  durable: string;
  /** One subject filter (nats-server 2.9 takes one); all subjects of the stream when absent. */
  filterSubject?: string;
  /** Deliveries before the message goes to the dead-letter subject; default 5. */
  maxDeliver?: number;
  /** Redelivery delays after each failed attempt; default 1 s, 5 s, 30 s, 2 min. */
  backoffMs?: number[];
  /** How long a delivery may go unacknowledged; default 30 s (extended while the handler runs). */
  ackWaitMs?: number;
  maxAckPending?: number;
}

/** What a service declares to exist before it reports SERVING. */
export interface Provisioning {
  streams?: StreamDecl[];
  kv?: KvDecl[];
  consumers?: ConsumerDecl[];
}

/** A message handed to a consumer handler. */
export interface ReceivedMessage {
  readonly subject: string;
  readonly headers: MsgHdrs | undefined;
  readonly data: Uint8Array;
  /** The CloudEvents `ce-type`, when the message is an event. */
  readonly type: string | undefined;
  /** The CloudEvents `ce-id` (also the msgID). */
  readonly id: string | undefined;
  /** 1 on the first delivery. */
  readonly deliveryCount: number;
  readonly streamSequence: number;
  /** When JetStream stored the message (ms since the epoch): the same on every delivery. */
  readonly storedAtMs?: number;
  /** Decodes the proto3 JSON body; a malformed body throws a {@link PermanentError}. */
  decode<S extends DescMessage>(event: EventDef<S>): MessageShape<S>;
}

/** A handler result that must not be retried: the message goes to the dead-letter subject now. */
export class PermanentError extends Error {
  override name = "PermanentError";
}

/** Handles one message; throw to nak (retried with backoff), resolve to ack. */
export type MessageHandler = (message: ReceivedMessage, signal: AbortSignal) => Promise<void>;

/** A running consumer. */
export interface ConsumerHandle {
  /** Stops pulling, lets the message in hand finish (or naks it at the deadline). */
  stop(timeoutMs?: number): Promise<void>;
}

/** Options of {@link Bus.connect}. */
export interface BusOptions {
  url: string;
  /** The client name nats-server shows, e.g. `nearhub-sync`. */
  name: string;
  /** `nearhub/<service>`, the CloudEvents `ce-source`. */
  source: string;
  names: Names;
  logger: Logger;
  metrics?: ServiceMetrics;
  /** Give up connecting after this long; default 15 s. */
  connectTimeoutMs?: number;
  /** nats-server's monitoring URL, to check that JetStream fsyncs every write. */
  monitorUrl?: string | undefined;
  /** Copies of each stream and bucket this service creates (1 on one server, 3 on a cluster). */
  replicas?: number;
}

const tracer = trace.getTracer("nearhub-bus");
const DEFAULT_BACKOFF_MS = [1_000, 5_000, 30_000, 120_000];

/**
 * The one NATS connection of a process: JetStream publishing that awaits the PubAck and
 * retries with the same msgID, CloudEvents with W3C trace context in headers, durable pull
 * consumers with explicit acks and a dead-letter subject, and idempotent provisioning.
 */
export class Bus {
  private readonly kvs = new Map<string, KV>();
  private readonly consumers = new Set<ConsumerHandle>();

  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    private readonly options: BusOptions,
  ) {}

  /** Names of subjects, streams and buckets in this namespace. */
  get names(): Names {
    return this.options.names;
  }

  /**
   * Connects, retrying until `connectTimeoutMs`; fails with UNAVAILABLE naming the URL when
   * nothing answers and FAILED_PRECONDITION when the server has no JetStream.
   */
  static async connect(options: BusOptions): Promise<Bus> {
    const servers = options.url.split(",").map((s) => s.trim());
    const giveUpAt = Date.now() + (options.connectTimeoutMs ?? 15_000);
    let nc: NatsConnection | undefined;
    let lastError: unknown;
    while (!nc) {
      try {
        nc = await connect({
          servers,
          name: options.name,
          timeout: 3_000,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 500,
          waitOnFirstConnect: false,
          // Every request/publish would otherwise build two Error objects for async stack traces:
          // the largest single cost of an audited read's publish. Our errors carry their own context.
          noAsyncTraces: true,
        });
      } catch (error) {
        lastError = error;
        if (Date.now() >= giveUpAt) {
          throw new NearhubError(
            Code.Unavailable,
            `cannot reach NATS at ${options.url}: ${(error as Error).message}. Start nats-server with JetStream (nats-server -js) or set NATS_URL to a reachable server.`,
            { cause: lastError },
          );
        }
        await sleep(300);
      }
    }
    let jsm: JetStreamManager;
    try {
      jsm = await jetstreamManager(nc, { timeout: 5_000 });
    } catch (error) {
      await nc.close();
      throw new NearhubError(
        Code.FailedPrecondition,
        `NATS at ${options.url} has no JetStream: ${(error as Error).message}. Start nats-server with -js (or jetstream {} in its config).`,
        { cause: error },
      );
    }
    const bus = new Bus(nc, jetstream(nc, { timeout: 5_000 }), jsm, options);
    bus.watchStatus();
    await bus.checkDurability();
    return bus;
  }

  private watchStatus(): void {
    const log = this.options.logger.child({ component: "bus" });
    void (async () => {
      for await (const s of this.nc.status()) {
        if (s.type === "disconnect" || s.type === "error") log.warn("NATS connection problem", { status: s.type });
        else if (s.type === "reconnect") log.info("NATS reconnected", { server: s.server });
      }
    })();
  }

  /**
   * Jepsen (2025) showed acknowledged JetStream writes lost with the default lazy fsync, so
   * warn unless the server is known to sync every write.
   */
  private async checkDurability(): Promise<void> {
    const log = this.options.logger.child({ component: "bus" });
    const version = this.nc.info?.version ?? "0.0.0";
    const [major = 0, minor = 0] = version.split(".").map(Number);
    if (major < 2 || (major === 2 && minor < 10)) {
      log.warn(
        `nats-server ${version} syncs JetStream to disk lazily and cannot be set to sync every write; acknowledged messages can be lost on power failure. Production should run nats-server 2.12 with jetstream { sync_interval: always }.`,
        { nats_version: version },
      );
      return;
    }
    if (!this.options.monitorUrl) {
      log.info("set NEARHUB_NATS_MONITOR_URL to let nearhub verify that nats-server syncs every write", {
        nats_version: version,
      });
      return;
    }
    try {
      const response = await fetch(new URL("/varz", this.options.monitorUrl), { signal: AbortSignal.timeout(3_000) });
      const varz = (await response.json()) as { jetstream?: { config?: { sync_always?: boolean } } };
      if (varz.jetstream?.config?.sync_always !== true) {
        log.warn(
          "nats-server reports lazy JetStream fsync; acknowledged messages can be lost on power failure. Set jetstream { sync_interval: always }.",
          { nats_version: version },
        );
      }
    } catch (error) {
      log.warn("could not read nats-server /varz to check its fsync setting", { error });
    }
  }

  /** Creates or updates every declared stream, bucket and consumer; safe to run on every start. */
  async provision(decl: Provisioning): Promise<void> {
    for (const stream of decl.streams ?? []) await this.ensureStream(stream);
    for (const kv of decl.kv ?? []) await this.kv(kv.bucket, kv);
    if ((decl.consumers ?? []).length > 0) await this.ensureStream(this.deadLetterStream());
    for (const consumer of decl.consumers ?? []) await this.ensureConsumer(consumer);
  }

  /** The stream that keeps dead letters: `nearhub.dlq.<stream>.<consumer>`. */
  deadLetterStream(): StreamDecl {
    return {
      name: this.names.stream("DEAD_LETTERS"),
      subjects: [this.names.subject("dlq.>")],
      max_age: nanos(30 * 24 * 3600 * 1000),
    };
  }

  private async ensureStream(decl: StreamDecl): Promise<void> {
    const { createOnly, ...declared } = decl;
    const stream = { num_replicas: this.options.replicas ?? 1, ...declared };
    try {
      const info = await this.jsm.streams.info(stream.name);
      if (createOnly) return;
      const current = info.config;
      const differs = Object.entries(stream).some(
        ([key, value]) => JSON.stringify(current[key as keyof StreamConfig]) !== JSON.stringify(value),
      );
      if (differs) await this.jsm.streams.update(stream.name, { ...stream });
    } catch (error) {
      if (!isNotFound(error)) throw wrapNats(error, `stream ${stream.name}`);
      try {
        await this.jsm.streams.add({ ...stream });
      } catch (addError) {
        // Another replica created it between our look-up and add: fine.
        if (!/already in use/i.test((addError as Error).message)) throw wrapNats(addError, `stream ${stream.name}`);
      }
    }
  }

  private async ensureConsumer(decl: ConsumerDecl): Promise<void> {
    const config: Partial<ConsumerConfig> = {
      durable_name: decl.durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      max_deliver: decl.maxDeliver ?? 5,
      ack_wait: nanos(decl.ackWaitMs ?? 30_000),
      // No server-side backoff: nats-server would take its steps as the ack wait and redeliver a
      // message while its handler still runs. Failed attempts are delayed by nak(delay) instead;
      // `[]` also clears the backoff of a consumer created before.
      backoff: [],
      max_ack_pending: decl.maxAckPending ?? 1000,
      ...(decl.filterSubject ? { filter_subject: decl.filterSubject } : {}),
    };
    try {
      await this.jsm.consumers.info(decl.stream, decl.durable);
      await this.jsm.consumers.update(decl.stream, decl.durable, config);
    } catch (error) {
      if (!isNotFound(error)) throw wrapNats(error, `consumer ${decl.stream}/${decl.durable}`);
      await this.jsm.consumers.add(decl.stream, config);
    }
  }

  /** Opens (creating when missing) a KV bucket; cached per process. */
  async kv(bucket: string, decl?: Omit<KvDecl, "bucket">): Promise<KV> {
    const cached = this.kvs.get(bucket);
    if (cached) return cached;
    const opts: Partial<KvOptions> = { history: decl?.history ?? 1, replicas: this.options.replicas ?? 1 };
    if (decl?.ttlMs) opts.ttl = decl.ttlMs;
    const kv = await new Kvm(this.js).create(bucket, opts).catch((error: unknown) => {
      throw wrapNats(error, `KV bucket ${bucket}`);
    });
    this.kvs.set(bucket, kv);
    return kv;
  }

  /**
   * Publishes to JetStream and waits for the PubAck. Retries (same msgID, so the stream keeps
   * one copy) on timeouts and lost connections; throws UNAVAILABLE when it cannot be stored.
   */
  async publish(
    subject: string,
    data: Uint8Array,
    opts: { msgID: string; headers?: MsgHdrs; type?: string },
  ): Promise<PubAck> {
    const type = opts.type ?? "raw";
    let lastError: unknown;
    for (let attempt = 1; attempt <= 5; attempt++) {
      try {
        const ack = await this.js.publish(subject, data, {
          msgID: opts.msgID,
          ...(opts.headers ? { headers: opts.headers } : {}),
          timeout: 5_000,
        });
        this.options.metrics?.published.inc({ type, result: ack.duplicate ? "duplicate" : "ok" });
        return ack;
      } catch (error) {
        lastError = error;
        if (this.nc.isClosed()) break;
        await sleep(100 * 2 ** attempt);
      }
    }
    this.options.metrics?.published.inc({ type, result: "error" });
    throw new NearhubError(
      Code.Unavailable,
      `could not store a message on ${subject} in JetStream: ${(lastError as Error)?.message ?? "connection closed"}`,
      { cause: lastError },
    );
  }

  /**
   * Publishes an event as a CloudEvent (NATS binding): `ce-*` headers, `Nats-Msg-Id` = `ce-id`,
   * `traceparent`, body the proto3 JSON of the message. Resolves once JetStream stored it.
   */
  async publishEvent<S extends DescMessage>(
    event: EventDef<S>,
    message: MessageInitShape<S>,
    opts: { id?: string; subject?: string } = {},
  ): Promise<PubAck> {
    const id = opts.id ?? randomUUID();
    const subject = opts.subject ?? this.names.eventSubject(event.domain, event.what);
    const body = new TextEncoder().encode(toJsonString(event.schema, create(event.schema, message)));
    return tracer.startActiveSpan(`publish ${event.type}`, { kind: SpanKind.PRODUCER }, async (span) => {
      try {
        const h = createHeaders();
        h.set("ce-specversion", "1.0");
        h.set("ce-id", id);
        h.set("ce-type", event.type);
        h.set("ce-source", this.options.source);
        h.set("ce-time", new Date().toISOString());
        h.set("content-type", "application/json");
        injectIntoHeaders(h);
        const ack = await this.publish(subject, body, { msgID: id, headers: h, type: event.type });
        span.setAttribute("messaging.destination.name", subject);
        return ack;
      } catch (error) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
    });
  }

  /**
   * Runs a handler on a durable consumer, one message at a time (per-consumer order) unless
   * `opts.concurrency` lets more run. Ack after
   * the handler resolves; on a throw, nak with the declared backoff; after the last attempt,
   * or at once for a {@link PermanentError}, publish to `nearhub.dlq.<stream>.<consumer>` and
   * terminate. Each message runs in a CONSUMER span whose parent is the publisher's context.
   */
  async consume(
    decl: ConsumerDecl,
    handler: MessageHandler,
    opts: {
      /**
       * Handlers in flight at once (default 1). Each message is still acked after its own
       * handler; handlers start in delivery order, so one that queues work keeps that order.
       */
      concurrency?: number;
    } = {},
  ): Promise<ConsumerHandle> {
    const log = this.options.logger.child({ component: "consumer", consumer: decl.durable });
    const concurrency = Math.max(1, opts.concurrency ?? 1);
    const consumer = await this.js.consumers.get(decl.stream, decl.durable);
    const messages = await consumer.consume({ max_messages: Math.max(16, concurrency) });
    const maxDeliver = decl.maxDeliver ?? 5;
    const backoff = decl.backoffMs ?? DEFAULT_BACKOFF_MS;
    const ackWait = decl.ackWaitMs ?? 30_000;
    const shutdown = new AbortController();
    // Export every outcome from the start, so `increase()` in alert rules sees the first one.
    for (const outcome of ["ack", "nak", "dead_letter"])
      this.options.metrics?.consumed.inc({ consumer: decl.durable, outcome }, 0);
    let stopping = false;

    const handleOne = async (m: JsMsg) => {
      const received = toReceived(m);
      const parent = extractFromHeaders(m.headers);
      await tracer.startActiveSpan(
        `process ${received.type ?? m.subject}`,
        {
          kind: SpanKind.CONSUMER,
          attributes: { "messaging.destination.name": m.subject, "messaging.consumer.group.name": decl.durable },
        },
        parent,
        async (span) => {
          // Keep the delivery ours while a long handler runs.
          const heartbeat = setInterval(() => m.working(), Math.max(1000, ackWait / 2));
          try {
            await handler(received, shutdown.signal);
            m.ack();
            this.options.metrics?.consumed.inc({ consumer: decl.durable, outcome: "ack" });
          } catch (error) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
            const permanent = error instanceof PermanentError;
            if (stopping && !permanent) {
              m.nak();
              this.options.metrics?.consumed.inc({ consumer: decl.durable, outcome: "nak" });
            } else if (permanent || m.info.deliveryCount >= maxDeliver) {
              await this.deadLetter(decl, m, error);
              // No reason: nats-server before 2.10.4 ignores `+TERM <reason>` and redelivers.
              // The reason is in the dead letter's nearhub-dlq-reason header.
              m.term();
              this.options.metrics?.consumed.inc({ consumer: decl.durable, outcome: "dead_letter" });
              log.error("message moved to the dead-letter subject", { subject: m.subject, seq: m.seq, error });
            } else {
              const delay = backoff[Math.min(m.info.deliveryCount - 1, backoff.length - 1)] ?? 1000;
              m.nak(delay);
              this.options.metrics?.consumed.inc({ consumer: decl.durable, outcome: "nak" });
              log.warn("handler failed; will retry", {
                subject: m.subject,
                seq: m.seq,
                attempt: m.info.deliveryCount,
                error,
              });
            }
          } finally {
            clearInterval(heartbeat);
            span.end();
          }
        },
      );
    };

    const loop = (async () => {
      const inFlight = new Set<Promise<void>>();
      let failed: { error: unknown } | undefined;
      for await (const m of messages) {
        if (stopping) {
          m.nak();
          continue;
        }
        const running: Promise<void> = handleOne(m)
          .catch((error: unknown) => void (failed ??= { error }))
          .finally(() => inFlight.delete(running));
        inFlight.add(running);
        if (inFlight.size >= concurrency) await Promise.race(inFlight);
        if (failed) throw failed.error;
      }
      await Promise.all(inFlight);
      if (failed) throw failed.error;
    })();

    const handle: ConsumerHandle = {
      stop: async (timeoutMs = 4000) => {
        stopping = true;
        // Armed first: close() resolves only once the loop, and so the handler in hand, is done.
        const timer = setTimeout(() => shutdown.abort(new Error("shutting down")), timeoutMs);
        await messages.close().catch(() => undefined);
        await loop.catch(() => undefined);
        clearTimeout(timer);
        this.consumers.delete(handle);
      },
    };
    this.consumers.add(handle);
    loop.catch((error: unknown) => log.error("consumer loop ended", { error }));
    return handle;
  }

  private async deadLetter(decl: ConsumerDecl, m: JsMsg, error: unknown): Promise<void> {
    const h = createHeaders();
    for (const [key, values] of m.headers ?? []) {
      if (key.toLowerCase() === "nats-msg-id") continue;
      for (const v of values) h.append(key, v);
    }
    h.set("nearhub-dlq-reason", String((error as Error)?.message ?? error).slice(0, 1000));
    h.set("nearhub-dlq-subject", m.subject);
    h.set("nearhub-dlq-stream-seq", String(m.seq));
    h.set("nearhub-dlq-deliveries", String(m.info.deliveryCount));
    await this.publish(this.names.subject(`dlq.${decl.stream}.${decl.durable}`), m.data, {
      msgID: `dlq:${decl.stream}:${decl.durable}:${m.seq}`,
      headers: h,
      type: "dead_letter",
    });
  }

  /** Stops every consumer (naking what they hold), then drains the connection. */
  async drain(timeoutMs = 4000): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.stop(timeoutMs)));
    if (!this.nc.isClosed()) await this.nc.drain().catch(() => this.nc.close());
  }
}

function toReceived(m: JsMsg): ReceivedMessage {
  const header = (key: string) => (m.headers?.has(key) ? m.headers.get(key) : undefined);
  return {
    subject: m.subject,
    headers: m.headers,
    data: m.data,
    type: header("ce-type"),
    id: header("ce-id"),
    deliveryCount: m.info.deliveryCount,
    streamSequence: m.seq,
    storedAtMs: Math.floor(m.info.timestampNanos / 1e6),
    decode<S extends DescMessage>(event: EventDef<S>): MessageShape<S> {
      try {
        return fromJsonString(event.schema, new TextDecoder().decode(m.data), { ignoreUnknownFields: true });
      } catch (error) {
        throw new PermanentError(`malformed ${event.type} body on ${m.subject}: ${(error as Error).message}`, {
          cause: error,
        });
      }
    },
  };
}

function isNotFound(error: unknown): boolean {
  const e = error as { code?: unknown; message?: string; api_error?: { err_code?: number } };
  return e?.api_error?.err_code === 10059 || e?.api_error?.err_code === 10014 || /not found/i.test(e?.message ?? "");
}

function wrapNats(error: unknown, what: string): NearhubError {
  return new NearhubError(Code.Unavailable, `cannot provision ${what} on NATS: ${(error as Error).message}`, {
    cause: error,
  });
}
