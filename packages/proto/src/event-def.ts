import type { DescMessage } from "@bufbuild/protobuf";

/**
 * A public event type: subject `nearhub.events.<domain>.<what>`, CloudEvents type
 * `nearhub.<domain>.<what>`, body the proto3 JSON of `schema`.
 */
export interface EventDef<S extends DescMessage = DescMessage> {
  readonly domain: string;
  readonly what: string;
  /** The `ce-type` header value. */
  readonly type: string;
  readonly schema: S;
}

/** Declares an event type. */
export function defineEvent<S extends DescMessage>(domain: string, what: string, schema: S): EventDef<S> {
  if (!/^[a-z][a-z0-9-]*$/.test(domain) || !/^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*$/.test(what)) {
    throw new Error(`event name ${domain}.${what} must be lower-case dotted words`);
  }
  return { domain, what, type: `nearhub.${domain}.${what}`, schema };
}
