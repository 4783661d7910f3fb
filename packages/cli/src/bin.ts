#!/usr/bin/env node
import { UsageError } from "./command.js";
import { commands } from "./commands/index.js";
import { resolveToken, setApiToken } from "./http-api.js";
import { installEdgeTls, takeCaOption } from "./tls.js";

function usage(): string {
  return [
    "nearhub — GitHub and AI model hubs, brought near the teams that use them",
    "",
    "Usage:",
    ...commands.flatMap((c) => c.usage.map((line) => `  ${line}`)),
    "",
    "Options for every command but up:",
    "  --url URL     the edge to talk to (default $NEARHUB_URL or http://127.0.0.1:8080)",
    "  (the CLI authenticates with $NEARHUB_TOKEN, or the admin token in $NEARHUB_DATA_DIR or .nearhub)",
    "  --ca FILE     trust this PEM CA for https and gRPC TLS (default $NEARHUB_CA); mutual TLS:",
    "                $NEARHUB_CLIENT_CERT and $NEARHUB_CLIENT_KEY",
    "",
  ].join("\n");
}

async function main(argv: string[]): Promise<number> {
  const global = takeCaOption(argv);
  if (global.ca !== undefined) process.env["NEARHUB_CA"] = global.ca;
  installEdgeTls(process.env);
  setApiToken(resolveToken(process.env));
  const [name, ...rest] = global.args;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    process.stdout.write(usage());
    return 0;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) throw new UsageError(`unknown command ${JSON.stringify(name)}`);
  return command.run(rest, { defaultUrl: process.env["NEARHUB_URL"] ?? "http://127.0.0.1:8080", env: process.env });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`nearhub: ${error.message}\nRun 'nearhub --help' for usage.\n`);
      process.exit(2);
    }
    process.stderr.write(`nearhub: ${(error as Error).message}\n`);
    process.exit(1);
  },
);
