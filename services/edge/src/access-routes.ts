import { toJson } from "@bufbuild/protobuf";
import { Code, NearhubError, sendJson } from "@nearhub/platform";
import { BindingSchema, TokenSchema } from "@nearhub/proto/access";
import type { Backends } from "./backends.js";
import { readJson, type Route } from "./router.js";

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800, y: 31_536_000 };

/** A token lifetime: seconds, or `90d`, `12h`, `1y`; `0`/`never` for no expiry. */
export function parseTtl(value: unknown): number {
  if (value === undefined || value === null || value === "" || value === "never" || value === 0 || value === "0")
    return 0;
  if (typeof value === "number" && Number.isInteger(value) && value > 0) return value;
  const m = typeof value === "string" ? /^(\d{1,6})([smhdwy])$/.exec(value) : null;
  if (!m)
    throw new NearhubError(
      Code.InvalidArgument,
      "ttl must be seconds or a duration such as 90d, 12h or 1y (0 or never: no expiry)",
    );
  return Number(m[1]) * UNITS[m[2]!]!;
}

function strings(value: unknown, name: string, max: number): string[] {
  if (value === undefined) return [];
  const list =
    typeof value === "string"
      ? value
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean)
      : value;
  if (!Array.isArray(list) || list.some((s) => typeof s !== "string"))
    throw new NearhubError(Code.InvalidArgument, `${name} must be a list of strings (or one comma-separated string)`);
  if (list.length > max) throw new NearhubError(Code.InvalidArgument, `${name} takes at most ${max} entries`);
  return list as string[];
}

function text(body: Record<string, unknown>, name: string, required: boolean): string {
  const value = body[name];
  if (value === undefined && !required) return "";
  if (typeof value !== "string" || (required && value.trim() === ""))
    throw new NearhubError(Code.InvalidArgument, `${name} is required and must be a string`);
  if (value.length > 300) throw new NearhubError(Code.InvalidArgument, `${name} is longer than 300 characters`);
  return value;
}

async function objectBody(req: Parameters<typeof readJson>[0]): Promise<Record<string, unknown>> {
  const body = await readJson(req);
  if (!body || typeof body !== "object" || Array.isArray(body))
    throw new NearhubError(Code.InvalidArgument, "the body must be a JSON object");
  return body as Record<string, unknown>;
}

/**
 * Access management through the edge: `/api/whoami`, `/api/tokens` (create, list, revoke) and
 * `/api/roles` (bind, list, unbind). The audit service keeps tokens and bindings and checks who
 * may change them; the edge forwards the caller's identity.
 */
export function accessRoutes(backends: Backends): Route[] {
  const token = (t: Parameters<typeof toJson<typeof TokenSchema>>[1]) => toJson(TokenSchema, t);
  return [
    {
      method: "GET",
      pattern: /^\/api\/whoami$/,
      template: "/api/whoami",
      handler: async ({ res, url }) => {
        const answer = await backends.access.whoAmI({ resource: url.searchParams.get("resource") ?? "" });
        sendJson(res, 200, answer);
      },
    },
    {
      method: "POST",
      pattern: /^\/api\/tokens$/,
      template: "/api/tokens",
      handler: async ({ req, res }) => {
        const body = await objectBody(req);
        const created = await backends.access.createToken({
          name: text(body, "name", false),
          role: text(body, "role", true),
          scopes: strings(body["scopes"] ?? body["scope"], "scopes", 32),
          ttlSeconds: BigInt(parseTtl(body["ttl"])),
        });
        sendJson(res, 201, { token: created.token ? token(created.token) : null, secret: created.secret });
      },
    },
    {
      method: "GET",
      pattern: /^\/api\/tokens$/,
      template: "/api/tokens",
      handler: async ({ res, url }) => {
        const { tokens } = await backends.access.listTokens({
          includeRevoked: url.searchParams.get("revoked") === "1",
        });
        sendJson(res, 200, { tokens: tokens.map(token) });
      },
    },
    {
      method: "DELETE",
      pattern: /^\/api\/tokens\/(?<id>[^/]+)$/,
      template: "/api/tokens/{id}",
      handler: async ({ res, params }) => {
        const revoked = await backends.access.revokeToken({ id: params["id"] ?? "" });
        sendJson(res, 200, { token: revoked.token ? token(revoked.token) : null });
      },
    },
    {
      method: "POST",
      pattern: /^\/api\/roles$/,
      template: "/api/roles",
      handler: async ({ req, res }) => {
        const body = await objectBody(req);
        const answer = await backends.access.putBinding({
          subject: text(body, "subject", true),
          role: text(body, "role", true),
          pattern: text(body, "pattern", true),
        });
        sendJson(res, answer.created ? 201 : 200, {
          binding: answer.binding ? toJson(BindingSchema, answer.binding) : null,
          created: answer.created,
        });
      },
    },
    {
      method: "GET",
      pattern: /^\/api\/roles$/,
      template: "/api/roles",
      handler: async ({ res, url }) => {
        const { bindings } = await backends.access.listBindings({ subject: url.searchParams.get("subject") ?? "" });
        sendJson(res, 200, { bindings: bindings.map((b) => toJson(BindingSchema, b)) });
      },
    },
    {
      method: "DELETE",
      pattern: /^\/api\/roles\/(?<id>[^/]+)$/,
      template: "/api/roles/{id}",
      handler: async ({ res, params }) => {
        const { deleted } = await backends.access.deleteBinding({ id: params["id"] ?? "" });
        if (!deleted)
          throw new NearhubError(Code.NotFound, `there is no role binding ${params["id"]?.slice(0, 40) ?? ""}`);
        sendJson(res, 200, { deleted });
      },
    },
  ];
}
