import { generateToken } from "@nearhub/platform";
import { parse, print, UsageError, type Command } from "../command.js";
import { callApi } from "../http-api.js";

interface TokenJson {
  id: string;
  name?: string;
  role?: string;
  scopes?: string[];
  createdAt?: string;
  expiresAt?: string;
  createdBy?: string;
  revoked?: boolean;
  revokedAt?: string;
}

function tokenLine(t: TokenJson): string {
  const state = t.revoked ? `revoked ${t.revokedAt ?? ""}` : t.expiresAt ? `expires ${t.expiresAt}` : "never expires";
  return `${t.id}  ${(t.role ?? "").padEnd(10)} ${(t.scopes ?? []).join(",").padEnd(28)} ${(t.name ?? "").padEnd(20)} ${state}  by ${t.createdBy ?? "?"}`;
}

/** `nearhub token create|list|revoke|generate`: API tokens. */
export const tokenCommand: Command = {
  name: "token",
  usage: [
    "nearhub token create --role viewer|developer|maintainer|admin [--scope PATTERN[,PATTERN]] [--ttl 90d] [--name N] [--json]",
    "    prints the token once: only its hash is kept",
    "nearhub token list [--revoked] [--json]",
    "nearhub token revoke <id>",
    "nearhub token generate   print a new token for NEARHUB_ADMIN_TOKEN (bootstrap; not stored anywhere)",
  ],
  async run(rest, ctx) {
    const [sub, ...args] = rest;
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      role: { type: "string" },
      scope: { type: "string" },
      ttl: { type: "string" },
      name: { type: "string" },
      revoked: { type: "boolean" },
      json: { type: "boolean" },
    });
    const base = values.url ?? ctx.defaultUrl;
    const json = values.json ?? false;
    switch (sub) {
      case "create": {
        if (!values.role) throw new UsageError("token create needs --role viewer, developer, maintainer or admin");
        if (positionals.length > 0)
          throw new UsageError(`token create takes no arguments; got ${positionals.join(" ")}`);
        const result = (await callApi(base, "POST", "/api/tokens", {
          role: values.role,
          scopes: values.scope ?? "*",
          ttl: values.ttl ?? "90d",
          ...(values.name ? { name: values.name } : {}),
        })) as { token: TokenJson; secret: string };
        print(json, result, () =>
          [
            result.secret,
            "",
            `token ${result.token.id}: ${result.token.role ?? "?"} on ${(result.token.scopes ?? []).join(", ")}, ${result.token.expiresAt ? `expires ${result.token.expiresAt}` : "never expires"}.`,
            "Copy it now: it is not shown again. Use it as NEARHUB_TOKEN, as 'Authorization: Bearer <token>', or as the git password.",
          ].join("\n"),
        );
        return 0;
      }
      case "list": {
        const result = (await callApi(base, "GET", `/api/tokens${values.revoked ? "?revoked=1" : ""}`)) as {
          tokens: TokenJson[];
        };
        print(json, result, () => (result.tokens.length === 0 ? "no tokens" : result.tokens.map(tokenLine).join("\n")));
        return 0;
      }
      case "revoke": {
        const id = positionals[0];
        if (!id) throw new UsageError("token revoke needs the token id, as 'nearhub token list' shows it");
        const result = (await callApi(base, "DELETE", `/api/tokens/${encodeURIComponent(id)}`)) as { token: TokenJson };
        print(json, result, () => `revoked: ${tokenLine(result.token)}`);
        return 0;
      }
      case "generate": {
        const { token } = generateToken();
        process.stdout.write(`${token}\n`);
        return 0;
      }
      default:
        throw new UsageError(`token needs one of create, list, revoke, generate; got ${JSON.stringify(sub ?? "")}`);
    }
  },
};

interface BindingJson {
  id: string;
  subject: string;
  role: string;
  pattern: string;
  createdBy?: string;
}

/** `nearhub role bind|list|unbind` and `nearhub whoami`: role bindings. */
export const roleCommand: Command = {
  name: "role",
  usage: [
    "nearhub role bind <user:NAME|group:NAME|token:ID|anonymous> <viewer|developer|maintainer|admin> <PATTERN>",
    "nearhub role list [--subject S] [--json]",
    "nearhub role unbind <id>",
  ],
  async run(rest, ctx) {
    const [sub, ...args] = rest;
    const { values, positionals } = parse(args, {
      url: { type: "string" },
      subject: { type: "string" },
      json: { type: "boolean" },
    });
    const base = values.url ?? ctx.defaultUrl;
    const json = values.json ?? false;
    const line = (b: BindingJson) => `${b.id}  ${b.subject.padEnd(24)} ${b.role.padEnd(10)} ${b.pattern}`;
    switch (sub) {
      case "bind": {
        const [subject, role, pattern] = positionals;
        if (!subject || !role || !pattern || positionals.length > 3)
          throw new UsageError(
            "role bind needs SUBJECT ROLE PATTERN, e.g. role bind group:ml developer 'models/acme/*'",
          );
        const result = (await callApi(base, "POST", "/api/roles", { subject, role, pattern })) as {
          binding: BindingJson;
          created: boolean;
        };
        print(json, result, () => `${result.created ? "bound" : "already bound"}: ${line(result.binding)}`);
        return 0;
      }
      case "list": {
        const query = values.subject ? `?subject=${encodeURIComponent(values.subject)}` : "";
        const result = (await callApi(base, "GET", `/api/roles${query}`)) as { bindings: BindingJson[] };
        print(json, result, () =>
          result.bindings.length === 0 ? "no role bindings" : result.bindings.map(line).join("\n"),
        );
        return 0;
      }
      case "unbind": {
        const id = positionals[0];
        if (!id) throw new UsageError("role unbind needs the binding id, as 'nearhub role list' shows it");
        await callApi(base, "DELETE", `/api/roles/${encodeURIComponent(id)}`);
        process.stdout.write(`unbound ${id}\n`);
        return 0;
      }
      default:
        throw new UsageError(`role needs one of bind, list, unbind; got ${JSON.stringify(sub ?? "")}`);
    }
  },
};

/** `nearhub whoami [--resource R]`: who the CLI's token is, and what it may do there. */
export const whoamiCommand: Command = {
  name: "whoami",
  usage: ["nearhub whoami [--resource github.com/acme/x] [--json]"],
  async run(args, ctx) {
    const { values } = parse(args, {
      url: { type: "string" },
      resource: { type: "string" },
      json: { type: "boolean" },
    });
    const base = values.url ?? ctx.defaultUrl;
    const query = values.resource ? `?resource=${encodeURIComponent(values.resource)}` : "";
    const result = (await callApi(base, "GET", `/api/whoami${query}`)) as {
      subject: string;
      groups?: string[];
      method?: string;
      permissions?: string[];
    };
    print(values.json ?? false, result, () =>
      [
        `${result.subject} (${result.method ?? "anonymous"})${result.groups?.length ? ` groups ${result.groups.join(", ")}` : ""}`,
        ...(values.resource ? [`on ${values.resource}: ${result.permissions?.join(", ") || "nothing"}`] : []),
      ].join("\n"),
    );
    return 0;
  },
};
