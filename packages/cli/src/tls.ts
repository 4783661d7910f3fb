import { rootCertificates } from "node:tls";
import { TransportSecurity, type ClientOptions } from "@nearhub/platform";
import { Agent, setGlobalDispatcher } from "undici";
import { UsageError } from "./command.js";

/**
 * Takes the global `--ca FILE` (or `--ca=FILE`) out of the arguments: it applies to every
 * command, so no command's own parser sees it.
 */
export function takeCaOption(args: string[]): { args: string[]; ca: string | undefined } {
  const rest: string[] = [];
  let ca: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--ca") {
      const value = args[i + 1];
      if (value === undefined || value.startsWith("--"))
        throw new UsageError("--ca needs a file: --ca /path/to/ca.pem");
      ca = value;
      i++;
    } else if (arg.startsWith("--ca=")) {
      ca = arg.slice("--ca=".length);
      if (ca === "") throw new UsageError("--ca needs a file: --ca=/path/to/ca.pem");
    } else {
      rest.push(arg);
    }
  }
  return { args: rest, ca };
}

/**
 * The CLI's TLS from NEARHUB_CA (a private CA; `--ca` sets it) and NEARHUB_CLIENT_CERT /
 * NEARHUB_CLIENT_KEY (mutual TLS); undefined when none is set. Unreadable files are a
 * ConfigError that names them.
 */
export function cliTls(env: NodeJS.ProcessEnv): TransportSecurity | undefined {
  const ca = env["NEARHUB_CA"] || undefined;
  const cert = env["NEARHUB_CLIENT_CERT"] || undefined;
  const key = env["NEARHUB_CLIENT_KEY"] || undefined;
  if (!ca && !cert && !key) return undefined;
  return TransportSecurity.client({ ca, cert, key });
}

/**
 * Makes every `fetch` to the edge trust NEARHUB_CA besides the public roots and present the
 * client certificate, if any. Without them, https edges with public certificates work as is.
 */
export function installEdgeTls(env: NodeJS.ProcessEnv): void {
  const client = cliTls(env)?.client;
  if (!client) return;
  setGlobalDispatcher(
    new Agent({
      connect: {
        ...(client.ca ? { ca: [...rootCertificates, client.ca.toString("utf8")] } : {}),
        ...(client.cert && client.key ? { cert: client.cert, key: client.key } : {}),
        minVersion: "TLSv1.2",
      },
    }),
  );
}

/**
 * Credentials of the CLI's direct gRPC calls (storage, inference): TLS when a CA or client
 * certificate is configured or the edge URL is https (the deployment speaks TLS), else plain.
 */
export function grpcCredentials(env: NodeJS.ProcessEnv): Pick<ClientOptions, "credentials"> {
  const tls = cliTls(env) ?? (env["NEARHUB_URL"]?.startsWith("https:") ? TransportSecurity.client({}) : undefined);
  return tls ? { credentials: tls.grpcChannelCredentials() } : {};
}
