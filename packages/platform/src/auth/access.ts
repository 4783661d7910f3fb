import type { Metadata } from "@grpc/grpc-js";
import { Decision, Outcome, publishAudit } from "../audit.js";
import type { Bus } from "../bus.js";
import { Code, NearhubError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { CallContext, Principal } from "../rpc-types.js";
import type { AuthConfig } from "./config.js";
import { currentPrincipal } from "./context.js";
import { IDENTITY_HEADER, IdentitySigner } from "./identity.js";
import { OidcVerifier } from "./oidc.js";
import type { Permission } from "./permissions.js";
import { ANONYMOUS, Policy, type AccessDecision, type TokenRecord } from "./policy.js";
import { PolicyStore, bootstrapRecord } from "./policy-store.js";
import { parseToken, secretMatches } from "./tokens.js";

/** Who did something, from where: a gRPC call context or an HTTP request. */
export interface AccessSource {
  principal: Principal;
  peer: string;
  metadata?: Metadata;
  userAgent?: string;
}

/** The credentials a request presented. */
export interface Credentials {
  /** The `Authorization` header/metadata value. */
  authorization?: string | undefined;
  /** An identity assertion from another nearhub service. */
  identity?: string | undefined;
}

const anonymous: Principal = { subject: ANONYMOUS, groups: [], method: "anonymous" };
const MAX_CREDENTIAL_LENGTH = 16 * 1024;
/** Verified API tokens kept (see `bearer`); past it the cache starts over. */
const MAX_VERIFIED_TOKENS = 10_000;
const ALLOWED: Promise<void> = Promise.resolve();

/**
 * Authentication and authorization for one service: API tokens (checked against the hashes in
 * the `rbac` bucket), OIDC JWTs (checked against the provider's JWKS), identity assertions of
 * other nearhub services, and the policy (roles bound to subjects on resource patterns). Every
 * denial is audited.
 */
export class Access {
  readonly policy: Policy;
  readonly identity: IdentitySigner;
  private readonly oidc: OidcVerifier | undefined;
  private readonly auditReads: boolean;
  private readonly readCounts = new Map<
    string,
    { source: AccessSource; resource: string; action: string; count: number }
  >();
  private readTimer: NodeJS.Timeout | undefined;
  /** Tokens whose secret matched, by the exact string, with the record it matched. */
  private readonly verifiedTokens = new Map<string, TokenRecord>();

  private constructor(
    readonly service: string,
    private readonly bus: Bus,
    readonly store: PolicyStore,
    key: Buffer,
    config: AuthConfig,
  ) {
    this.policy = store.policy;
    this.identity = new IdentitySigner(key, service);
    this.auditReads = config.NEARHUB_AUDIT_READS === "on";
    this.oidc =
      config.NEARHUB_OIDC_ISSUER && config.NEARHUB_OIDC_JWKS_URL
        ? new OidcVerifier({
            issuer: config.NEARHUB_OIDC_ISSUER,
            audience: config.NEARHUB_OIDC_AUDIENCE ?? "nearhub",
            jwksUrl: config.NEARHUB_OIDC_JWKS_URL,
            userClaim: config.NEARHUB_OIDC_USER_CLAIM,
            groupsClaim: config.NEARHUB_OIDC_GROUPS_CLAIM,
          })
        : undefined;
  }

  /** Loads the policy from the `rbac` bucket and keeps it current. */
  static async start(options: { service: string; bus: Bus; config: AuthConfig; logger: Logger }): Promise<Access> {
    const { config } = options;
    if (!config.NEARHUB_INTERNAL_KEY)
      throw new NearhubError(
        Code.FailedPrecondition,
        "NEARHUB_INTERNAL_KEY is not set: every nearhub service needs the same secret (32+ random bytes in base64, e.g. `openssl rand -base64 32`) to vouch for callers to the others; `nearhub up` creates one",
      );
    const policy = new Policy(config.NEARHUB_ANONYMOUS_READ);
    const store = await PolicyStore.open(options.bus, policy, options.logger.child({ component: "rbac" }));
    if (config.NEARHUB_ADMIN_TOKEN) {
      // Known from the configuration even before (or without) the audit service recording it;
      // what the bucket says (e.g. revoked) wins.
      const record = bootstrapRecord(config.NEARHUB_ADMIN_TOKEN);
      if (/^0+$/.test(record.id))
        options.logger.warn(
          "NEARHUB_ADMIN_TOKEN is a published placeholder (infra/k8s/secrets.yaml): anyone can use it; replace it with `nearhub token generate`",
        );
      if (!policy.tokens.has(record.id)) policy.tokens.set(record.id, record);
    }
    return new Access(options.service, options.bus, store, Buffer.from(config.NEARHUB_INTERNAL_KEY, "base64"), config);
  }

  async stop(): Promise<void> {
    if (this.readTimer) clearInterval(this.readTimer);
    await this.flushReads();
    await this.store.stop();
  }

  /**
   * Records a read (a clone, a download) in the audit trail when reads are audited
   * (NEARHUB_AUDIT_READS). It does not hold up the answer: the read has been served already.
   */
  recordRead(source: AccessSource, action: string, resource: string): void {
    if (!this.auditReads) return;
    void publishAudit(this.bus, this.service, { action, resource }, source).catch(() => undefined);
  }

  /**
   * Counts a frequent read (an inference) and records one audit entry per caller, action and
   * resource per minute with the count, so thousands of requests a second stay auditable.
   */
  countRead(source: AccessSource, action: string, resource: string): void {
    if (!this.auditReads) return;
    const key = `${source.principal.subject}\u0000${action}\u0000${resource}`;
    const entry = this.readCounts.get(key);
    if (entry) entry.count++;
    else
      this.readCounts.set(key, {
        source: {
          principal: source.principal,
          peer: source.peer,
          userAgent: source.userAgent ?? String(source.metadata?.get("user-agent")[0] ?? ""),
        },
        resource,
        action,
        count: 1,
      });
    this.readTimer ??= setInterval(() => void this.flushReads(), 60_000).unref();
  }

  private async flushReads(): Promise<void> {
    const entries = [...this.readCounts.values()];
    this.readCounts.clear();
    await Promise.all(
      entries.map((e) =>
        publishAudit(
          this.bus,
          this.service,
          { action: e.action, resource: e.resource, details: { count: String(e.count) } },
          e.source,
        ).catch(() => undefined),
      ),
    );
  }

  /** Who presented these credentials; anonymous when none. UNAUTHENTICATED when they are bad. */
  async authenticate(credentials: Credentials): Promise<Principal> {
    return this.principalOf(credentials);
  }

  /**
   * {@link authenticate} without a promise when no I/O is needed (API tokens, identity
   * assertions, anonymous): the per-call path of every RPC. Throws UNAUTHENTICATED at once.
   */
  private principalOf(credentials: Credentials): Principal | Promise<Principal> {
    const { authorization, identity } = credentials;
    if (identity) {
      if (identity.length > MAX_CREDENTIAL_LENGTH) throw unauthenticated(`the ${IDENTITY_HEADER} value is too long`);
      const principal = this.identity.verify(identity);
      if (principal.method === "token") this.checkTokenStillUsable(principal.subject);
      return principal;
    }
    if (!authorization) return anonymous;
    if (authorization.length > MAX_CREDENTIAL_LENGTH)
      throw unauthenticated("the Authorization header is longer than 16 KiB");
    const space = authorization.indexOf(" ");
    const scheme = (space < 0 ? authorization : authorization.slice(0, space)).toLowerCase();
    const value = space < 0 ? "" : authorization.slice(space + 1).trim();
    if (!value) throw unauthenticated("the Authorization header has no credentials: use 'Bearer <token>'");
    switch (scheme) {
      case "bearer":
      case "token":
        return this.bearer(value);
      case "basic": {
        let decoded: string;
        try {
          decoded = Buffer.from(value, "base64").toString("utf8");
        } catch {
          throw unauthenticated("the Basic credentials are not base64");
        }
        const colon = decoded.indexOf(":");
        const password = colon < 0 ? "" : decoded.slice(colon + 1);
        if (!password) throw unauthenticated("HTTP Basic needs an API token as the password (any user name)");
        return this.bearer(password);
      }
      default:
        throw unauthenticated(
          `the Authorization scheme '${scheme.slice(0, 20)}' is not supported: use 'Bearer <token>'`,
        );
    }
  }

  /**
   * {@link authenticate}, with every refusal recorded in the audit trail (actor anonymous, the
   * reason in the details) before it is thrown.
   */
  async authenticateAudited(
    credentials: Credentials,
    source: Omit<AccessSource, "principal">,
    resource: string,
  ): Promise<Principal> {
    try {
      return await this.principalOf(credentials);
    } catch (error) {
      return this.refused(error, source, resource);
    }
  }

  /** Records a refused authentication in the audit trail (actor anonymous), then throws it. */
  private async refused(error: unknown, source: Omit<AccessSource, "principal">, resource: string): Promise<never> {
    const e = NearhubError.from(error, Code.Unauthenticated);
    await publishAudit(
      this.bus,
      this.service,
      {
        action: "access.authenticate",
        resource: resource.slice(0, 300),
        decision: Decision.DENY,
        outcome: Outcome.FAILURE,
        details: { reason: e.rawMessage },
      },
      { ...source, principal: anonymous },
    ).catch(() => undefined);
    throw error;
  }

  private bearer(value: string): Principal | Promise<Principal> {
    // A token seen before is known by its exact string: no pattern, no hash. The entry holds
    // only while the policy still has the very record it matched (a revocation, an expiry
    // change or a re-issue replaces the record, and the token is checked in full again).
    const known = this.verifiedTokens.get(value);
    if (known !== undefined && this.policy.tokens.get(known.id) === known) return usableToken(known);
    // A huggingface.co token that huggingface_hub sends on its own (the user is logged in there)
    // is not ours and proves nothing here: the caller reads as anonymous.
    if (/^hf_[A-Za-z0-9]{20,80}$/.test(value)) return anonymous;
    const parsed = parseToken(value);
    if (parsed) {
      const token = this.policy.tokens.get(parsed.id);
      // The hash is checked once per token and record (a revocation replaces the record).
      if (!token || (this.verifiedTokens.get(value) !== token && !secretMatches(parsed.secret, token.hash)))
        throw unauthenticated("the API token is not valid");
      // Bounded: past 10,000 distinct tokens the cache starts over (each is verified again).
      if (this.verifiedTokens.size >= MAX_VERIFIED_TOKENS) this.verifiedTokens.clear();
      this.verifiedTokens.set(value, token);
      return usableToken(token);
    }
    if (value.split(".").length === 3) {
      if (!this.oidc)
        throw unauthenticated(
          "JWTs are not accepted here: no OIDC issuer is configured (NEARHUB_OIDC_ISSUER, NEARHUB_OIDC_JWKS_URL)",
        );
      return this.oidc.verify(value);
    }
    throw unauthenticated("the bearer credential is neither a nearhub API token (nhp_…) nor a JWT");
  }

  private checkTokenStillUsable(subject: string): void {
    const token = this.policy.tokens.get(subject.slice("token:".length));
    if (!this.policy.tokenUsable(token)) throw unauthenticated("the API token behind this call is no longer valid");
  }

  decide(principal: Principal, permission: Permission, resource: string): AccessDecision {
    return this.policy.decide(principal, permission, resource);
  }

  /**
   * Refuses with PERMISSION_DENIED (UNAUTHENTICATED for anonymous callers, so clients prompt
   * for credentials) unless the source's principal may do `permission` on `resource`; every
   * refusal is recorded in the audit trail.
   */
  authorize(source: AccessSource, permission: Permission, resource: string): Promise<void> {
    const decision = this.policy.decide(source.principal, permission, resource);
    // Allowed is every call's answer: one shared settled promise instead of an async frame.
    return decision.allowed ? ALLOWED : this.denied(source, permission, resource, decision);
  }

  private async denied(
    source: AccessSource,
    permission: Permission,
    resource: string,
    decision: AccessDecision,
  ): Promise<never> {
    await publishAudit(
      this.bus,
      this.service,
      {
        action: `access.${permission}`,
        resource,
        decision: Decision.DENY,
        outcome: Outcome.FAILURE,
        details: { reason: decision.reason },
      },
      source,
    ).catch(() => undefined);
    throw new NearhubError(
      source.principal.subject === ANONYMOUS ? Code.Unauthenticated : Code.PermissionDenied,
      decision.reason,
    );
  }

  /** The gRPC server hooks: who is calling (from metadata) and per-method checks. */
  grpcAuthenticate(): (ctx: CallContext) => Promise<Principal> {
    return (ctx) => {
      // As authenticateAudited, with one promise per call when the answer needs no I/O.
      try {
        const principal = this.principalOf({
          authorization: first(ctx.metadata.get("authorization")),
          identity: first(ctx.metadata.get(IDENTITY_HEADER)),
        });
        return principal instanceof Promise
          ? principal.catch((error: unknown) => this.refused(error, ctx, ctx.method))
          : Promise.resolve(principal);
      } catch (error) {
        return this.refused(error, ctx, ctx.method);
      }
    };
  }

  grpcAuthorize(): (ctx: CallContext, permission: Permission, resource: string) => Promise<void> {
    return (ctx, permission, resource) => this.authorize(ctx, permission, resource);
  }

  /**
   * Metadata for calls this service makes: the identity of the principal the current request
   * runs for (see `runAs`), or this service's own.
   */
  clientMetadata(): () => Record<string, string> {
    return () => {
      const principal = currentPrincipal();
      const asserted = principal && principal.method && principal.method !== "service" ? principal : undefined;
      return { [IDENTITY_HEADER]: this.identity.assert(asserted) };
    };
  }
}

function first(values: Array<string | Buffer>): string | undefined {
  const v = values[0];
  return v === undefined ? undefined : typeof v === "string" ? v : v.toString("utf8");
}

/** The principal of a token whose secret matched: refused when revoked or expired. */
function usableToken(token: TokenRecord): Principal {
  if (token.revokedAt !== undefined)
    throw unauthenticated(`the API token ${token.id} was revoked on ${new Date(token.revokedAt).toISOString()}`);
  if (token.expiresAt !== undefined && token.expiresAt <= Date.now())
    throw unauthenticated(`the API token ${token.id} expired on ${new Date(token.expiresAt).toISOString()}`);
  return { subject: `token:${token.id}`, groups: [], method: "token" };
}

function unauthenticated(message: string): NearhubError {
  return new NearhubError(Code.Unauthenticated, message);
}
