import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  NearhubError,
  publishAudit,
  type Access,
  type BindingRecord,
  type Bus,
  type CallContext,
  type ServiceImpl,
  type TokenRecord,
} from "@nearhub/platform";
import type { AccessService } from "@nearhub/proto/access";

const TOKEN_ID = /^[0-9a-f]{16}$/;

function tokenMessage(t: TokenRecord) {
  return {
    id: t.id,
    name: t.name,
    role: t.role,
    scopes: t.scopes,
    createdAt: timestampFromMs(t.createdAt),
    ...(t.expiresAt !== undefined ? { expiresAt: timestampFromMs(t.expiresAt) } : {}),
    createdBy: t.createdBy,
    revoked: t.revokedAt !== undefined,
    ...(t.revokedAt !== undefined ? { revokedAt: timestampFromMs(t.revokedAt) } : {}),
  };
}

function bindingMessage(b: BindingRecord) {
  return {
    id: b.id,
    subject: b.subject,
    role: b.role,
    pattern: b.pattern,
    createdBy: b.createdBy,
    createdAt: timestampFromMs(b.createdAt),
  };
}

/**
 * nearhub.access.v1.AccessService: API tokens and role bindings. The audit service is the only
 * writer of the `rbac` bucket; every change is itself audited.
 */
export function accessApi({ access, bus }: { access: Access; bus: Bus }): ServiceImpl<typeof AccessService> {
  const store = access.store;
  const policy = access.policy;
  const audit = (ctx: CallContext, action: string, resource: string, details: Record<string, string> = {}) =>
    publishAudit(bus, "audit", { action, resource, details }, ctx);
  const signedIn = (ctx: CallContext) => {
    if (ctx.principal.subject === "anonymous")
      throw new NearhubError(Code.Unauthenticated, "managing tokens needs a signed-in caller: send an API token");
  };
  const mayManage = (ctx: CallContext) => access.decide(ctx.principal, "tokens.manage", "tokens").allowed;

  return {
    async createToken(request, ctx) {
      signedIn(ctx);
      const { record, token } = await store.createToken(
        { name: request.name, role: request.role, scopes: request.scopes, ttlSeconds: Number(request.ttlSeconds) },
        ctx.principal,
      );
      await audit(ctx, "token.create", `token:${record.id}`, { role: record.role, scopes: record.scopes.join(",") });
      return { token: tokenMessage(record), secret: token };
    },

    async listTokens(request, ctx) {
      signedIn(ctx);
      const all = mayManage(ctx);
      const tokens = [...policy.tokens.values()]
        .filter((t) => all || t.createdBy === ctx.principal.subject || `token:${t.id}` === ctx.principal.subject)
        .filter((t) => request.includeRevoked || t.revokedAt === undefined)
        .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
      return { tokens: tokens.map(tokenMessage) };
    },

    async revokeToken(request, ctx) {
      signedIn(ctx);
      if (!TOKEN_ID.test(request.id))
        throw new NearhubError(
          Code.InvalidArgument,
          `'${request.id.slice(0, 40)}' is not a token id (16 hex characters, as \`nearhub token list\` shows)`,
        );
      const token = policy.tokens.get(request.id);
      const own = token && (token.createdBy === ctx.principal.subject || ctx.principal.subject === `token:${token.id}`);
      if (!own) await ctx.authorize("tokens.manage", "tokens");
      if (!token) throw new NearhubError(Code.NotFound, `there is no token ${request.id}`);
      const revoked = await store.revokeToken(request.id);
      await audit(ctx, "token.revoke", `token:${request.id}`);
      return { token: tokenMessage(revoked) };
    },

    async putBinding(request, ctx) {
      await ctx.authorize("roles.manage", request.pattern || "*");
      const { binding, created } = await store.putBinding(
        { subject: request.subject, role: request.role, pattern: request.pattern },
        ctx.principal,
      );
      if (created)
        await audit(ctx, "role.bind", binding.pattern, {
          subject: binding.subject,
          role: binding.role,
          id: binding.id,
        });
      return { binding: bindingMessage(binding), created };
    },

    async listBindings(request, ctx) {
      await ctx.authorize("roles.manage", "rbac");
      const bindings = [...policy.bindings.values()]
        .filter((b) => !request.subject || b.subject === request.subject)
        .sort((a, b) => a.subject.localeCompare(b.subject) || a.pattern.localeCompare(b.pattern));
      return { bindings: bindings.map(bindingMessage) };
    },

    async deleteBinding(request, ctx) {
      const binding = policy.bindings.get(request.id);
      await ctx.authorize("roles.manage", binding?.pattern ?? "rbac");
      const deleted = await store.deleteBinding(request.id);
      if (deleted)
        await audit(ctx, "role.unbind", binding?.pattern ?? request.id, {
          id: request.id,
          ...(binding ? { subject: binding.subject, role: binding.role } : {}),
        });
      return { deleted };
    },

    async whoAmI(request, ctx) {
      const resource = request.resource.trim();
      if (resource.length > 256) throw new NearhubError(Code.InvalidArgument, "resource is longer than 256 characters");
      return {
        subject: ctx.principal.subject,
        groups: ctx.principal.groups,
        method: ctx.principal.method ?? "anonymous",
        permissions: resource ? access.policy.permissionsOn(ctx.principal, resource) : [],
      };
    },
  };
}
