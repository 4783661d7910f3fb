import type { Principal } from "../rpc-types.js";
import { ROLE_PERMISSIONS, matchesPattern, type Permission, type Role } from "./permissions.js";

/** A stored API token (the secret itself is never stored, only its sha256). */
export interface TokenRecord {
  id: string;
  name: string;
  role: Role;
  scopes: string[];
  hash: string;
  createdAt: number;
  /** Epoch ms; absent: never expires. */
  expiresAt?: number;
  /** The subject that created it: `user:…`, `token:…`, or `system` for the bootstrap token. */
  createdBy: string;
  /** The creator's groups when it created the token (OIDC groups are not stored elsewhere). */
  creatorGroups: string[];
  revokedAt?: number;
}

/** A role bound to a subject on a resource pattern. */
export interface BindingRecord {
  id: string;
  /** `user:alice`, `group:ml`, `token:<id>`, `service:sync` or `anonymous`. */
  subject: string;
  role: Role;
  pattern: string;
  createdBy: string;
  createdAt: number;
}

/** The answer to "may this principal do that": with the reason when it may not. */
export interface AccessDecision {
  allowed: boolean;
  /** Says which permission was missing on which resource, without saying whether it exists. */
  reason: string;
}

/** The subject every unauthenticated caller has. */
export const ANONYMOUS = "anonymous";

/**
 * Content-addressed blobs: knowing a sha256 is the capability, so a blob may be read (written)
 * by anyone who may read (write) some resource; what a repo contains is guarded by the registry.
 */
export const BLOBS = "blobs";
const MAX_TOKEN_CHAIN = 4;

/**
 * The access policy as one process sees it: bindings and tokens (kept current by a watch of the
 * `rbac` bucket) plus the configured anonymous-read patterns. Pure and synchronous, so a check
 * costs microseconds on every request.
 */
export class Policy {
  readonly tokens = new Map<string, TokenRecord>();
  readonly bindings = new Map<string, BindingRecord>();

  constructor(private readonly anonymousRead: readonly string[] = []) {}

  /** Whether `principal` may do `permission` on `resource`. */
  decide(principal: Principal, permission: Permission, resource: string, now = Date.now()): AccessDecision {
    if (this.allows(principal, permission, resource, now, 0)) return { allowed: true, reason: "" };
    return { allowed: false, reason: this.denial(principal, permission, resource) };
  }

  /** Every permission `principal` has on `resource`. */
  permissionsOn(principal: Principal, resource: string, now = Date.now()): Permission[] {
    return [...ROLE_PERMISSIONS.admin].filter((p) => this.allows(principal, p, resource, now, 0));
  }

  /** Whether a token may be used now: it exists, is not revoked and has not expired. */
  tokenUsable(token: TokenRecord | undefined, now = Date.now()): token is TokenRecord {
    return token !== undefined && token.revokedAt === undefined && (token.expiresAt ?? Infinity) > now;
  }

  private allows(principal: Principal, permission: Permission, resource: string, now: number, depth: number): boolean {
    const subject = principal.subject;
    if (principal.method === "service" && subject.startsWith("service:")) return true;
    if (resource === BLOBS) return this.allowsAnywhere(principal, permission, now, depth);
    // What anyone may read: the configured public patterns and `anonymous` bindings.
    if (permission === "read" && this.anonymousAllows(resource)) return true;
    if (subject === ANONYMOUS) return false;
    if (subject.startsWith("token:")) {
      if (depth >= MAX_TOKEN_CHAIN) return false;
      const token = this.tokens.get(subject.slice("token:".length));
      if (!this.tokenUsable(token, now)) return false;
      if (!ROLE_PERMISSIONS[token.role].has(permission)) return false;
      if (!token.scopes.some((scope) => matchesPattern(scope, resource))) return false;
      // A token never does more than its creator may do now (a removed binding disarms it).
      if (token.createdBy === "system") return true;
      const creator: Principal = {
        subject: token.createdBy,
        groups: token.creatorGroups,
        method: token.createdBy.startsWith("token:") ? "token" : "oidc",
      };
      return this.allows(creator, permission, resource, now, depth + 1);
    }
    const subjects = new Set([subject, ...principal.groups.map((g) => (g.startsWith("group:") ? g : `group:${g}`))]);
    for (const binding of this.bindings.values()) {
      if (
        subjects.has(binding.subject) &&
        ROLE_PERMISSIONS[binding.role].has(permission) &&
        matchesPattern(binding.pattern, resource)
      )
        return true;
    }
    return false;
  }

  private allowsAnywhere(principal: Principal, permission: Permission, now: number, depth: number): boolean {
    const subject = principal.subject;
    if (principal.method === "service" && subject.startsWith("service:")) return true;
    if (permission === "read" && (this.anonymousRead.length > 0 || this.bindsAnonymous())) return true;
    if (subject === ANONYMOUS) return false;
    if (subject.startsWith("token:")) {
      if (depth >= MAX_TOKEN_CHAIN) return false;
      const token = this.tokens.get(subject.slice("token:".length));
      if (!this.tokenUsable(token, now) || !ROLE_PERMISSIONS[token.role].has(permission)) return false;
      if (token.createdBy === "system") return true;
      const creator: Principal = {
        subject: token.createdBy,
        groups: token.creatorGroups,
        method: token.createdBy.startsWith("token:") ? "token" : "oidc",
      };
      return this.allowsAnywhere(creator, permission, now, depth + 1);
    }
    const subjects = new Set([subject, ...principal.groups.map((g) => (g.startsWith("group:") ? g : `group:${g}`))]);
    for (const binding of this.bindings.values())
      if (subjects.has(binding.subject) && ROLE_PERMISSIONS[binding.role].has(permission)) return true;
    return false;
  }

  private bindsAnonymous(): boolean {
    for (const binding of this.bindings.values()) if (binding.subject === ANONYMOUS) return true;
    return false;
  }

  private anonymousAllows(resource: string): boolean {
    if (this.anonymousRead.some((p) => matchesPattern(p, resource))) return true;
    for (const binding of this.bindings.values()) {
      if (binding.subject === ANONYMOUS && matchesPattern(binding.pattern, resource)) return true;
    }
    return false;
  }

  private denial(principal: Principal, permission: Permission, resource: string): string {
    if (principal.subject === ANONYMOUS)
      return `'${permission}' on '${resource}' needs a signed-in caller: send an API token (Authorization: Bearer nhp_…; for git, the token as the password)`;
    if (principal.subject.startsWith("token:")) {
      const token = this.tokens.get(principal.subject.slice("token:".length));
      if (token && this.tokenUsable(token))
        return `'${permission}' on '${resource}' is not granted to ${principal.subject} (role ${token.role} on ${token.scopes.join(", ")})`;
    }
    return `'${permission}' on '${resource}' is not granted to ${principal.subject}`;
  }
}
