import { createHmac, timingSafeEqual } from "node:crypto";
import { Code, NearhubError } from "../errors.js";
import type { Principal } from "../rpc-types.js";

/** The metadata key/header that carries an identity assertion between services. */
export const IDENTITY_HEADER = "x-nearhub-identity";
const VERSION = "nhi1";
const LIFETIME_MS = 5 * 60_000;
const REUSE_MS = 60_000;
const MAX_LENGTH = 8192;

interface Claims {
  /** Subject. */
  s: string;
  /** Groups. */
  g: string[];
  /** How the subject authenticated at the first hop. */
  m: NonNullable<Principal["method"]>;
  /** Issuing service. */
  i: string;
  /** Expiry, epoch ms. */
  e: number;
}

/**
 * Identity assertions between services: `nhi1.<claims>.<hmac>`, HMAC-SHA256 with the secret
 * every service shares (NEARHUB_INTERNAL_KEY). The edge authenticates a user once and forwards
 * who it is; the callee re-checks the permission against its own copy of the policy, so a
 * service can act on behalf of a user but never beyond what that user may do. A service
 * acting on its own account asserts `service:<name>`. Synchronous (HMAC, no JWT library) so a
 * client can attach it to every call; signatures are reused for a minute and verified ones
 * cached until they expire.
 */
export class IdentitySigner {
  private readonly signed = new Map<string, { value: string; until: number }>();
  private readonly verified = new Map<string, { principal: Principal; until: number }>();

  constructor(
    private readonly key: Buffer,
    readonly service: string,
  ) {
    if (key.length < 32) throw new Error("the internal key must be at least 32 bytes");
  }

  /** The assertion for `principal` (or for this service itself). */
  assert(principal: Principal = { subject: `service:${this.service}`, groups: [], method: "service" }): string {
    const method = principal.method ?? "anonymous";
    const cacheKey = `${method}\u0000${principal.subject}\u0000${principal.groups.join("\u0000")}`;
    const now = Date.now();
    const hit = this.signed.get(cacheKey);
    if (hit && hit.until > now) return hit.value;
    const claims: Claims = {
      s: principal.subject,
      g: principal.groups,
      m: method,
      i: this.service,
      e: now + LIFETIME_MS,
    };
    const body = Buffer.from(JSON.stringify(claims)).toString("base64url");
    const value = `${VERSION}.${body}.${this.mac(body)}`;
    if (this.signed.size > 10_000) this.signed.clear();
    this.signed.set(cacheKey, { value, until: now + REUSE_MS });
    return value;
  }

  /** The principal an assertion vouches for; UNAUTHENTICATED when forged, malformed or expired. */
  verify(value: string): Principal {
    const now = Date.now();
    const hit = this.verified.get(value);
    if (hit && hit.until > now) return hit.principal;
    const refuse = (why: string) => new NearhubError(Code.Unauthenticated, `the ${IDENTITY_HEADER} assertion ${why}`);
    if (value.length > MAX_LENGTH) throw refuse("is too long");
    const [version, body, mac, extra] = value.split(".");
    if (version !== VERSION || !body || !mac || extra !== undefined) throw refuse("is malformed");
    const expected = Buffer.from(this.mac(body), "base64url");
    const given = Buffer.from(mac, "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw refuse("has a bad signature");
    let claims: Claims;
    try {
      claims = JSON.parse(Buffer.from(body, "base64url").toString("utf8")) as Claims;
    } catch {
      throw refuse("is malformed");
    }
    if (typeof claims.e !== "number" || claims.e <= now) throw refuse("has expired");
    if (typeof claims.s !== "string" || !Array.isArray(claims.g)) throw refuse("is malformed");
    const principal: Principal = { subject: claims.s, groups: claims.g, method: claims.m, via: claims.i };
    if (this.verified.size > 10_000) this.verified.clear();
    this.verified.set(value, { principal, until: claims.e });
    return principal;
  }

  private mac(body: string): string {
    return createHmac("sha256", this.key).update(`${VERSION}.${body}`).digest("base64url");
  }
}
