import { nanos } from "@nats-io/nats-core";
import { StorageType } from "@nats-io/jetstream";
import type { StreamDecl } from "./bus.js";
import type { Names } from "./names.js";

const DAY_MS = 24 * 3600 * 1000;

/**
 * `EVENTS`: every public event (`nearhub.events.>`). Every publisher declares it with these
 * same settings, so whichever service starts first creates it and none fights another.
 */
export function eventsStream(names: Names): StreamDecl {
  return {
    name: names.stream("EVENTS"),
    subjects: [names.subject("events.>")],
    storage: StorageType.File,
    max_age: nanos(30 * DAY_MS),
    duplicate_window: nanos(10 * 60 * 1000),
  };
}

/**
 * `AUDIT`: the audit inbox (`nearhub.audit.>`), file storage, no deletes, no purges. The audit
 * service owns its retention; other services only create it when missing (`createOnly`) so
 * that an audit event is never refused for want of a stream.
 */
export function auditStream(names: Names, retentionDays = 400, createOnly = true): StreamDecl {
  return {
    name: names.stream("AUDIT"),
    subjects: [names.subject("audit.>")],
    storage: StorageType.File,
    max_age: nanos(retentionDays * DAY_MS),
    duplicate_window: nanos(10 * 60 * 1000),
    deny_delete: true,
    deny_purge: true,
    createOnly,
  };
}
