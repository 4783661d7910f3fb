import { parse, UsageError, type Command } from "../command.js";
import { parseDuration } from "../duration.js";
import { up } from "../up.js";

/** `nearhub up`: everything on this machine. */
export const upCommand: Command = {
  name: "up",
  usage: [
    "nearhub up [--data DIR] [--port N] [--nats-port N] [--ready-timeout 60s] [--private]   run everything on this machine (Ctrl-C stops);",
    "    anyone may read (clone, download) unless --private; writes need the admin token in DIR/admin-token or NEARHUB_TOKEN",
  ],
  async run(args, ctx) {
    const { values, positionals } = parse(args, {
      data: { type: "string" },
      port: { type: "string" },
      "ready-timeout": { type: "string" },
      "nats-port": { type: "string" },
      private: { type: "boolean" },
    });
    if (positionals.length > 0) throw new UsageError(`up takes no arguments; got ${positionals.join(" ")}`);
    const port = Number(values.port ?? "8080");
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new UsageError(`--port ${values.port ?? ""} must be a whole number from 0 to 65535`);
    }
    const natsPort = Number(values["nats-port"] ?? "4222");
    if (!Number.isInteger(natsPort) || natsPort < 1 || natsPort > 65535) {
      throw new UsageError(`--nats-port ${values["nats-port"] ?? ""} must be a whole number from 1 to 65535`);
    }
    const readyTimeoutS = parseDuration(values["ready-timeout"] ?? "60s");
    return up({
      dataDir: values.data ?? ".nearhub",
      httpPort: port,
      readyTimeoutS,
      natsPort,
      private: values.private === true,
      env: ctx.env,
    });
  },
};
