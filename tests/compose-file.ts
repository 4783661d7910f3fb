// docker-compose.yml as `docker compose config` reads it, for tests/compose.test.ts and
// tests/k8s.test.ts: no Docker engine runs here, so the file is parsed with the `yaml` package
// and interpolated the way compose does.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { generateToken } from "@nearhub/platform";

const root = fileURLToPath(new URL("..", import.meta.url));

export interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string | number | boolean | null>;
  healthcheck?: { test: string[] | string };
  depends_on?: Record<string, { condition: string }>;
  volumes?: string[];
}
export interface ComposeFile {
  services: Record<string, ComposeService>;
}

/** What compose says when a `${VAR:?message}` (or `${VAR?message}`) variable is missing. */
export class MissingVariableError extends Error {
  override name = "MissingVariableError";
  constructor(
    readonly variable: string,
    readonly where: string,
    readonly hint: string,
  ) {
    super(`error while interpolating ${where}: required variable ${variable} is missing a value: ${hint}`);
  }
}

// `$$` (a literal `$`), `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
// `${VAR?message}`, `${VAR:+replacement}`, `${VAR+replacement}` and bare `$VAR`.
const VARIABLE = /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g;

/** Compose's interpolation of one string; `where` names it in errors (`services.edge.environment.X`). */
export function interpolate(text: string, vars: Record<string, string | undefined>, where: string): string {
  return text.replace(
    VARIABLE,
    (
      match: string,
      braced: string | undefined,
      colon: string | undefined,
      operator: string | undefined,
      argument: string | undefined,
      bare: string | undefined,
    ) => {
      if (match === "$$") return "$";
      const name = (braced ?? bare)!;
      const value = vars[name];
      // With the colon, an empty value counts as unset (compose's rule, as in the shell).
      const set = colon ? value !== undefined && value !== "" : value !== undefined;
      switch (operator) {
        case "-":
          return set ? value! : argument!;
        case "?":
          if (!set) throw new MissingVariableError(name, where, argument!);
          return value!;
        case "+":
          return set ? argument! : "";
        default:
          return value ?? "";
      }
    },
  );
}

/** Interpolates every string in a parsed compose document, as compose does after loading. */
function interpolateTree(node: unknown, vars: Record<string, string | undefined>, where: string): unknown {
  if (typeof node === "string") return interpolate(node, vars, where);
  if (Array.isArray(node)) return node.map((item, i) => interpolateTree(item, vars, `${where}[${i}]`));
  if (node !== null && typeof node === "object") {
    return Object.fromEntries(
      Object.entries(node).map(([key, value]) => [key, interpolateTree(value, vars, where ? `${where}.${key}` : key)]),
    );
  }
  return node;
}

/** The text of docker-compose.yml. */
export const composeText = (): string => readFileSync(`${root}docker-compose.yml`, "utf8");

/**
 * The variables docker-compose.yml refuses to start without (`${VAR:?…}` / `${VAR?…}`), with
 * the hint compose prints for each.
 */
export function requiredVariables(text = composeText()): Map<string, string> {
  const required = new Map<string, string>();
  for (const m of text.matchAll(VARIABLE)) {
    if (m[1] && m[3] === "?") required.set(m[1], m[4] ?? "");
  }
  return required;
}

/** Every variable docker-compose.yml reads from the environment or .env. */
export function composeVariables(text = composeText()): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(VARIABLE)) {
    const name = m[1] ?? m[5];
    if (name) names.add(name);
  }
  return names;
}

/**
 * Fresh values for exactly the required variables, made the way .env.example says: a random
 * 32-byte base64 key and a token from `generateToken()` (what `nearhub token generate` prints).
 */
export function requiredValues(): Record<string, string> {
  return {
    NEARHUB_INTERNAL_KEY: randomBytes(32).toString("base64"),
    NEARHUB_ADMIN_TOKEN: generateToken().token,
  };
}

/** docker-compose.yml loaded and interpolated with `vars` (nothing else set). */
export function loadCompose(vars: Record<string, string | undefined>, text = composeText()): ComposeFile {
  return interpolateTree(parse(text, { merge: true }), vars, "") as ComposeFile;
}
