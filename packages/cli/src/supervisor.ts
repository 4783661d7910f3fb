import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";
import { once } from "node:events";

/** One supervised child process. */
export interface ChildSpec {
  name: string;
  command: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** File that receives the child's stdout and stderr. */
  logFile: string;
}

/** A running child with the tail of its output, for error reports. */
export interface Supervised {
  spec: ChildSpec;
  process: ChildProcess;
  /** The last lines the child printed. */
  tail: string[];
  exited: Promise<number | null>;
}

/**
 * Starts children and stops them together: SIGTERM to all, SIGKILL to whatever is left after
 * the grace period. Their output goes to their log files; warnings and errors (JSON lines of
 * level warn/error, or any non-JSON line) are echoed to our stderr with the child's name.
 */
export class Supervisor {
  private readonly children: Supervised[] = [];
  private readonly logs: WriteStream[] = [];

  /** Starts a child. */
  start(spec: ChildSpec, onExit?: (code: number | null, signal: NodeJS.Signals | null) => void): Supervised {
    const log = createWriteStream(spec.logFile, { flags: "a" });
    this.logs.push(log);
    // Own process group: a terminal's Ctrl-C reaches only us, and we stop the children in
    // order. The IPC channel tells a child when we die, so none outlives us.
    const child = spawn(spec.command, spec.args, {
      env: spec.env,
      stdio: ["ignore", "pipe", "pipe", "ipc"],
      detached: true,
    });
    const tail: string[] = [];
    const onData = (chunk: Buffer) => {
      log.write(chunk);
      for (const line of chunk.toString("utf8").split("\n")) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 40) tail.shift();
        echoIfImportant(spec.name, line);
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    const exited = new Promise<number | null>((resolve) => {
      child.once("exit", (code, signal) => {
        onExit?.(code, signal);
        resolve(code);
      });
      child.once("error", (error) => {
        tail.push(`failed to start ${spec.command}: ${error.message}`);
        onExit?.(127, null);
        resolve(127);
      });
    });
    const supervised: Supervised = { spec, process: child, tail, exited };
    this.children.push(supervised);
    return supervised;
  }

  /** Stops every child: SIGTERM, then SIGKILL after `graceMs`; resolves when all have exited. */
  async stopAll(graceMs: number, order: (names: string[]) => string[][] = (n) => [n]): Promise<void> {
    const byName = new Map(this.children.map((c) => [c.spec.name, c]));
    for (const group of order([...byName.keys()])) {
      const batch = group.map((n) => byName.get(n)).filter((c): c is Supervised => c !== undefined);
      await Promise.all(batch.map((c) => stopChild(c, graceMs)));
    }
    await Promise.all(this.logs.map((l) => new Promise<void>((resolve) => l.end(() => resolve()))));
  }
}

async function stopChild(child: Supervised, graceMs: number): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return;
  child.process.kill("SIGTERM");
  const timer = setTimeout(() => child.process.kill("SIGKILL"), graceMs);
  await Promise.race([child.exited, once(child.process, "exit")]);
  clearTimeout(timer);
}

const echoed = new Set<string>();

function echoIfImportant(name: string, line: string): void {
  let level = "error";
  let message = line;
  try {
    const parsed = JSON.parse(line) as { level?: string; msg?: string };
    level = parsed.level ?? "info";
    message = parsed.msg ?? line;
  } catch {
    // Not JSON: a crash trace or a start-up error; always worth showing.
  }
  if (level === "warn" || level === "error" || level === "fatal") {
    // Every service warns about the same NATS setting; say it once.
    if (level === "warn" && echoed.has(message)) return;
    echoed.add(message);
    process.stderr.write(`[${name}] ${level}: ${message}\n`);
  }
}
