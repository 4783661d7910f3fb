/** One `name=value` entry of a comma-separated variable; `eq` is -1 when there is no `=`. */
export interface ListEntry {
  /** The entry as written (trimmed), for messages. */
  part: string;
  name: string;
  value: string;
  eq: number;
}

/** Splits `name=value,name=value` (the shape of NEARHUB_GIT_UPSTREAMS, _TOKENS, _GITHUB_APPS…). */
export function listEntries(text: string): ListEntry[] {
  return text
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)
    .map((part) => {
      const eq = part.indexOf("=");
      return { part, eq, name: part.slice(0, eq).trim(), value: part.slice(eq + 1).trim() };
    });
}
