import { parse, print, type Command } from "../command.js";
import { ApiError, callApi } from "../http-api.js";

/** `nearhub health`: every service's state, as the edge's /healthz reports it. */
export const healthCommand: Command = {
  name: "health",
  usage: ["nearhub health [--json]"],
  async run(args, ctx) {
    const { values } = parse(args, { url: { type: "string" }, json: { type: "boolean" } });
    let result: { status: string; services: Record<string, string> };
    try {
      result = (await callApi(values.url ?? ctx.defaultUrl, "GET", "/healthz")) as typeof result;
    } catch (error) {
      if (error instanceof ApiError && error.status === 503) {
        process.stdout.write(`NOT_SERVING: ${error.message}\n`);
        return 1;
      }
      throw error;
    }
    print(values.json ?? false, result, () =>
      Object.entries(result.services)
        .map(([name, state]) => `${name.padEnd(18)} ${state}`)
        .join("\n"),
    );
    return 0;
  },
};
