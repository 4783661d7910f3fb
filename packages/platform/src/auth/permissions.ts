/**
 * What a principal may do, and where. Resources are names such as `github.com/acme/rocket`
 * (a git mirror), `models/acme/bert`, `datasets/acme/squad`, `spaces/acme/demo`, `blobs`,
 * `audit`, `tokens` and `rbac`; patterns select them with `*`.
 */

/** Every permission a role can grant. */
export const PERMISSIONS = [
  "read",
  "write",
  "mirror",
  "sync",
  "delete",
  "infer",
  "load",
  "audit.read",
  "tokens.manage",
  "roles.manage",
] as const;

export type Permission = (typeof PERMISSIONS)[number];

/** The four roles, from least to most powerful. */
export const ROLES = ["viewer", "developer", "maintainer", "admin"] as const;

export type Role = (typeof ROLES)[number];

const viewer: Permission[] = ["read"];
const developer: Permission[] = [...viewer, "write", "sync", "infer"];
const maintainer: Permission[] = [...developer, "mirror", "delete", "load"];

/** The permissions each role grants on the resources its binding's pattern selects. */
export const ROLE_PERMISSIONS: Readonly<Record<Role, ReadonlySet<Permission>>> = {
  viewer: new Set(viewer),
  developer: new Set(developer),
  maintainer: new Set(maintainer),
  admin: new Set(PERMISSIONS),
};

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

export function isPermission(value: string): value is Permission {
  return (PERMISSIONS as readonly string[]).includes(value);
}

const PATTERN = /^(\*|[A-Za-z0-9._*-]+(\/[A-Za-z0-9._*-]+){0,7})$/;

/**
 * Why `pattern` is not a valid resource pattern, or undefined when it is. A pattern is `*`, or
 * up to eight `/`-separated segments of letters, digits, `.`, `_`, `-` and `*`; `*` inside a
 * segment matches within that segment, a final `/*` matches everything below.
 */
export function patternProblem(pattern: string): string | undefined {
  if (pattern.length === 0) return "a resource pattern is empty: use e.g. 'github.com/acme/*' or '*'";
  if (pattern.length > 256) return "a resource pattern is longer than 256 characters";
  if (!PATTERN.test(pattern))
    return `'${pattern.slice(0, 80)}' is not a resource pattern: use segments of letters, digits, '.', '_', '-' and '*' separated by '/', e.g. 'github.com/acme/*' or 'models/acme/*'`;
  if (pattern.split("/").some((s) => s === "." || s === ".."))
    return `'${pattern.slice(0, 80)}' is not a resource pattern: '.' and '..' segments are not allowed`;
  return undefined;
}

const compiled = new Map<string, RegExp>();

/** Whether `pattern` selects `resource`. */
export function matchesPattern(pattern: string, resource: string): boolean {
  if (pattern === "*") return true;
  let re = compiled.get(pattern);
  if (!re) {
    const segments = pattern.split("/");
    const parts = segments.map((segment, i) => {
      if (segment === "*" && i === segments.length - 1) return null;
      return segment.replace(/[.+?^${}()|[\]\\-]/g, "\\$&").replace(/\*/g, "[^/]*");
    });
    const last = parts.at(-1);
    const body = last === null ? `${parts.slice(0, -1).join("/")}/.+` : parts.join("/");
    re = new RegExp(`^${body}$`);
    if (compiled.size > 10_000) compiled.clear();
    compiled.set(pattern, re);
  }
  return re.test(resource);
}
