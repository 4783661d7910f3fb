import { readFileSync } from "node:fs";
import { join } from "node:path";

let token: string | undefined;

/**
 * The API token the CLI sends: $NEARHUB_TOKEN, else the bootstrap admin token `nearhub up`
 * keeps in its data folder ($NEARHUB_DATA_DIR, default `.nearhub`) when this user can read it.
 */
export function resolveToken(env: NodeJS.ProcessEnv): string | undefined {
  const fromEnv = env["NEARHUB_TOKEN"]?.trim();
  if (fromEnv) return fromEnv;
  try {
    return readFileSync(join(env["NEARHUB_DATA_DIR"] ?? ".nearhub", "admin-token"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Sets the token every call to nearhub carries. */
export function setApiToken(value: string | undefined): void {
  token = value;
}

/** `Authorization` for HTTP and gRPC metadata, when a token is set. */
export function authHeaders(): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** Thrown when the edge answers with an error: carries its status and message. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Calls the edge's JSON API; throws ApiError with the server's message on failure. */
export async function callApi(
  baseUrl: string,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = 30_000,
): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(new URL(path, baseUrl), {
      method,
      headers: { ...authHeaders(), ...(body === undefined ? {} : { "content-type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message;
    throw new ApiError(0, `cannot reach nearhub at ${baseUrl} (${cause}); start it with 'nearhub up' or pass --url`);
  }
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    throw new ApiError(response.status, `nearhub answered ${response.status} with a body that is not JSON`);
  }
  if (!response.ok) {
    const message = (json as { error?: string }).error ?? `HTTP ${response.status}`;
    if (response.status === 401 && !token)
      throw new ApiError(401, `${message} (set NEARHUB_TOKEN to an API token from 'nearhub token create')`);
    throw new ApiError(response.status, message);
  }
  return json;
}
