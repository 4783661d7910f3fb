/**
 * Names of subjects, streams and KV buckets within one namespace. Production uses the empty
 * namespace (subjects under `nearhub.`, stream `EVENTS`, bucket `mirrors`); tests use a unique
 * one so that runs sharing a NATS server never collide.
 */
export class Names {
  /** The subject root: `nearhub`, or `nearhub_<ns>`. */
  readonly root: string;

  constructor(readonly namespace: string = "") {
    this.root = namespace ? `nearhub_${namespace}` : "nearhub";
  }

  /** `nearhub.events.<domain>.<what>` */
  eventSubject(domain: string, what: string): string {
    return `${this.root}.events.${domain}.${what}`;
  }

  /** `nearhub.audit.<service>.<action>` */
  auditSubject(service: string, action: string): string {
    return `${this.root}.audit.${service}.${action}`;
  }

  /** Any subject under the root, e.g. `jobs.sync`. */
  subject(rest: string): string {
    return `${this.root}.${rest}`;
  }

  /** A stream name such as `EVENTS`, prefixed by the namespace when there is one. */
  stream(name: string): string {
    return this.namespace ? `${this.namespace.toUpperCase()}_${name}` : name;
  }

  /** A KV bucket name such as `mirrors`. */
  bucket(name: string): string {
    return this.namespace ? `${this.namespace}_${name}` : name;
  }

  /** A durable consumer name. */
  durable(name: string): string {
    return name;
  }
}
