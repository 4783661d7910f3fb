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
      headers: body === undefined ? {} : { "content-type": "application/json" },
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
    throw new ApiError(response.status, message);
  }
  return json;
}
