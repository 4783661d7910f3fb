import { createHash } from "node:crypto";
import type { KV, KvWatchEntry } from "@nats-io/kv";
import type { Bus } from "../bus.js";
import { Code, NearhubError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Principal } from "../rpc-types.js";
import { isRole, patternProblem, ROLE_PERMISSIONS, type Role } from "./permissions.js";
import { ANONYMOUS, type BindingRecord, type Policy, type TokenRecord } from "./policy.js";
import { generateToken, hashSecret, parseToken } from "./tokens.js";

/** The bucket the policy lives in (its owner is the audit service). */
export const RBAC_BUCKET = "rbac";
const SUBJECT = /^(anonymous|(user|group|token|service):[A-Za-z0-9._@+=:-]{1,128})$/;
const MAX_TTL_SECONDS = 10 * 365 * 86_400;

/** What {@link PolicyStore.createToken} needs. */
export interface NewToken {
  name: string;
  role: string;
  scopes: string[];
  /** 0: never expires. */
  ttlSeconds: number;
}

/**
 * The `rbac` bucket as one service sees it: a KV watch keeps {@link Policy} current (a revoked
 * token or removed binding takes effect within moments in every process), and the owner's
 * writes go through here with validation and compare-and-set.
 */
export class PolicyStore {
  private stopped = false;
  private watcher: Awaited<ReturnType<KV["watch"]>> | undefined;
  private readonly loop: Promise<void>;

  private constructor(
    private readonly kv: KV,
    readonly policy: Policy,
    private readonly logger: Logger,
    ready: () => void,
  ) {
    this.loop = this.watchForever(ready);
  }

  /** Opens the bucket and returns once the current policy is loaded. */
  static async open(bus: Bus, policy: Policy, logger: Logger): Promise<PolicyStore> {
    const kv = await bus.kv(bus.names.bucket(RBAC_BUCKET), { history: 5 });
    let ready!: () => void;
    const loaded = new Promise<void>((resolve) => (ready = resolve));
    const store = new PolicyStore(kv, policy, logger, ready);
    const status = await kv.status();
    if (status.values === 0) ready();
    await loaded;
    return store;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.stop();
    await this.loop;
  }

  private async watchForever(ready: () => void): Promise<void> {
    let revision = 0;
    while (!this.stopped) {
      try {
        this.watcher = await this.kv.watch(revision > 0 ? { resumeFromRevision: revision + 1 } : {});
        // stop() may have run while the watch was being created (an empty bucket makes open()
        // return at once): it found no watcher to stop, so stop this one here.
        if (this.stopped) {
          this.watcher.stop();
          return;
        }
        for await (const entry of this.watcher) {
          revision = Math.max(revision, entry.revision);
          this.apply(entry);
          if (entry.delta === 0) ready();
        }
      } catch (error) {
        if (this.stopped) return;
        this.logger.warn("rbac watch interrupted; resuming", { error });
      }
      if (!this.stopped) await new Promise((r) => setTimeout(r, 500));
    }
  }

  private apply(entry: KvWatchEntry): void {
    const [kind, id] = splitKey(entry.key);
    const deleted = entry.operation !== "PUT" || entry.length === 0;
    try {
      if (kind === "token" && id) {
        if (deleted) this.policy.tokens.delete(id);
        else this.policy.tokens.set(id, entry.json<TokenRecord>());
      } else if (kind === "binding" && id) {
        if (deleted) this.policy.bindings.delete(id);
        else this.policy.bindings.set(id, entry.json<BindingRecord>());
      }
    } catch (error) {
      this.logger.error("unreadable rbac entry ignored", { key: entry.key, error });
    }
  }

  // ---- owner writes ----

  /** Creates a token no more powerful than `creator`; returns the secret once. */
  async createToken(input: NewToken, creator: Principal): Promise<{ record: TokenRecord; token: string }> {
    const name = input.name.trim() || "token";
    if (name.length > 100) throw invalid("the token name is longer than 100 characters");
    if (!isRole(input.role)) throw invalid(`'${input.role}' is not a role: use viewer, developer, maintainer or admin`);
    const scopes = input.scopes.length > 0 ? input.scopes : ["*"];
    if (scopes.length > 32) throw invalid("a token takes at most 32 scopes");
    for (const scope of scopes) {
      const problem = patternProblem(scope);
      if (problem) throw invalid(problem);
    }
    if (!Number.isInteger(input.ttlSeconds) || input.ttlSeconds < 0 || input.ttlSeconds > MAX_TTL_SECONDS)
      throw invalid("the token lifetime must be from 0 (never expires) to 10 years");
    this.mayGrant(creator, input.role, scopes);
    const { id, token, hash } = generateToken();
    const now = Date.now();
    const record: TokenRecord = {
      id,
      name,
      role: input.role,
      scopes,
      hash,
      createdAt: now,
      createdBy: creator.subject,
      creatorGroups: creator.groups,
      ...(input.ttlSeconds > 0 ? { expiresAt: now + input.ttlSeconds * 1000 } : {}),
    };
    await this.kv.create(`token.${id}`, JSON.stringify(record));
    this.policy.tokens.set(id, record);
    return { record, token };
  }

  /** Makes sure a configured bootstrap admin token is recorded (idempotent; a revoked one stays revoked). */
  async ensureBootstrapToken(token: string): Promise<TokenRecord> {
    const record = bootstrapRecord(token);
    const existing = this.policy.tokens.get(record.id);
    if (existing && existing.hash !== record.hash)
      throw invalid("NEARHUB_ADMIN_TOKEN clashes with an existing token id; generate another one");
    const stored = await this.kv.get(`token.${record.id}`);
    if (stored?.operation === "PUT" && stored.length > 0) return stored.json<TokenRecord>();
    try {
      await this.kv.create(`token.${record.id}`, JSON.stringify(record));
    } catch {
      // Another replica recorded it first.
    }
    return record;
  }

  async revokeToken(id: string): Promise<TokenRecord> {
    if (!/^[0-9a-f]{16}$/.test(id))
      throw invalid(`'${id.slice(0, 40)}' is not a token id (16 hex characters, as \`nearhub token list\` shows)`);
    for (let attempt = 0; attempt < 5; attempt++) {
      const entry = await this.kv.get(`token.${id}`);
      if (!entry || entry.operation !== "PUT" || entry.length === 0)
        throw new NearhubError(Code.NotFound, `there is no token ${id}`);
      const record = entry.json<TokenRecord>();
      if (record.revokedAt !== undefined) return record;
      const revoked = { ...record, revokedAt: Date.now() };
      try {
        await this.kv.update(`token.${id}`, JSON.stringify(revoked), entry.revision);
        this.policy.tokens.set(id, revoked);
        return revoked;
      } catch {
        // Changed meanwhile: read it again.
      }
    }
    throw new NearhubError(Code.Aborted, `token ${id} kept changing; try again`);
  }

  async putBinding(
    input: { subject: string; role: string; pattern: string },
    creator: Principal,
  ): Promise<{ binding: BindingRecord; created: boolean }> {
    if (!SUBJECT.test(input.subject))
      throw invalid(
        `'${input.subject.slice(0, 80)}' is not a subject: use user:NAME, group:NAME, token:ID, service:NAME or anonymous`,
      );
    if (!isRole(input.role)) throw invalid(`'${input.role}' is not a role: use viewer, developer, maintainer or admin`);
    const problem = patternProblem(input.pattern);
    if (problem) throw invalid(problem);
    if (input.subject === ANONYMOUS && input.role !== "viewer")
      throw invalid("anonymous callers can only be bound to the viewer role: writes are never anonymous");
    const id = bindingId(input.subject, input.role, input.pattern);
    const existing = this.policy.bindings.get(id);
    if (existing) return { binding: existing, created: false };
    const binding: BindingRecord = {
      id,
      subject: input.subject,
      role: input.role,
      pattern: input.pattern,
      createdBy: creator.subject,
      createdAt: Date.now(),
    };
    try {
      await this.kv.create(`binding.${id}`, JSON.stringify(binding));
    } catch {
      const entry = await this.kv.get(`binding.${id}`);
      if (entry?.operation === "PUT" && entry.length > 0)
        return { binding: entry.json<BindingRecord>(), created: false };
      await this.kv.put(`binding.${id}`, JSON.stringify(binding));
    }
    this.policy.bindings.set(id, binding);
    return { binding, created: true };
  }

  async deleteBinding(id: string): Promise<boolean> {
    if (!/^[0-9a-f]{16}$/.test(id))
      throw invalid(`'${id.slice(0, 40)}' is not a binding id (16 hex characters, as \`nearhub role list\` shows)`);
    const existed = this.policy.bindings.has(id) || (await this.kv.get(`binding.${id}`))?.operation === "PUT";
    if (existed) await this.kv.delete(`binding.${id}`);
    this.policy.bindings.delete(id);
    return existed;
  }

  /** Refuses to let `creator` hand out a role it does not hold itself on every scope. */
  private mayGrant(creator: Principal, role: Role, scopes: string[]): void {
    for (const scope of scopes) {
      for (const permission of ROLE_PERMISSIONS[role]) {
        // The scope as a resource: `github.com/acme/*` is checked as the resource `github.com/acme/*`,
        // which only a grant on a pattern at least as wide matches.
        const decision = this.policy.decide(creator, permission, scope);
        if (!decision.allowed)
          throw new NearhubError(
            Code.PermissionDenied,
            `${creator.subject} cannot create a ${role} token on '${scope}': it lacks '${permission}' there itself`,
          );
      }
    }
  }
}

/** The record of a configured bootstrap admin token. */
export function bootstrapRecord(token: string): TokenRecord {
  const parsed = parseToken(token);
  if (!parsed)
    throw invalid(
      "NEARHUB_ADMIN_TOKEN must look like nhp_<16 hex>_<43 base64url characters>; create one with `nearhub token generate`",
    );
  return {
    id: parsed.id,
    name: "bootstrap admin (NEARHUB_ADMIN_TOKEN)",
    role: "admin",
    scopes: ["*"],
    hash: hashSecret(parsed.secret),
    createdAt: 0,
    createdBy: "system",
    creatorGroups: [],
  };
}

/** The deterministic id of a binding. */
export function bindingId(subject: string, role: string, pattern: string): string {
  return createHash("sha256").update(`${subject}\u0000${role}\u0000${pattern}`).digest("hex").slice(0, 16);
}

function splitKey(key: string): [string, string | undefined] {
  const dot = key.indexOf(".");
  return dot < 0 ? [key, undefined] : [key.slice(0, dot), key.slice(dot + 1)];
}

function invalid(message: string): NearhubError {
  return new NearhubError(Code.InvalidArgument, message);
}
