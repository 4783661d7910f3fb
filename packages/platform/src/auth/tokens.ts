import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * API tokens look like `nhp_<id>_<secret>`: `id` (16 hex) names the token's record, `secret`
 * (43 base64url characters, 256 bits) is shown once; only its sha256 is stored.
 */
export const TOKEN_PREFIX = "nhp_";
const TOKEN = /^nhp_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export interface ParsedToken {
  id: string;
  secret: string;
}

/** A new token: its id, the full string to hand out once, and the hash to store. */
export function generateToken(): { id: string; token: string; hash: string } {
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return { id, token: `${TOKEN_PREFIX}${id}_${secret}`, hash: hashSecret(secret) };
}

/** The parts of a token string, or undefined when it is not shaped like a nearhub token. */
export function parseToken(token: string): ParsedToken | undefined {
  const m = TOKEN.exec(token);
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

/** Constant-time comparison of a presented secret with a stored hash. */
export function secretMatches(secret: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), "hex");
  const b = Buffer.from(storedHash, "hex");
  return a.length === b.length && timingSafeEqual(a, b);
}
