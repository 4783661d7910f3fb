import { parseArgs } from "node:util";

/** What every command gets besides its arguments. */
export interface CommandContext {
  /** The edge to talk to: `--url`, else $NEARHUB_URL, else http://127.0.0.1:8080. */
  defaultUrl: string;
  env: NodeJS.ProcessEnv;
}

/** One `nearhub <name> …` command; `run` resolves with the exit code. */
export interface Command {
  name: string;
  /** Usage lines shown by `nearhub --help`. */
  usage: string[];
  run(args: string[], ctx: CommandContext): Promise<number>;
}

/** A usage error: exit code 2 with the message and a pointer to --help. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Option declarations, as node's parseArgs takes them (no multiples, no defaults). */
export type Options = Record<string, { type: "string" | "boolean"; short?: string }>;

/** The parsed values: strings or booleans, absent when not given. */
export type Values<O extends Options> = { [K in keyof O]?: O[K]["type"] extends "boolean" ? boolean : string };

/** Strict option parsing; unknown or malformed options become a {@link UsageError}. */
export function parse<O extends Options>(args: string[], options: O): { values: Values<O>; positionals: string[] } {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** Prints JSON (for scripts) or text (for people). */
export function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${text()}\n`);
}
