/**
 * A benchmark's own process (a server under test, a load generator): forked with tsx, talked to
 * over IPC with messages that carry a `type`, so the bench's client work stays off its event loop.
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

export class BenchChild<Request, Message extends { type: string }> {
  private constructor(
    readonly child: ChildProcess,
    /** The first message it sent (its `ready`, or why it cannot run). */
    readonly first: Message,
  ) {}

  /**
   * Forks `script` (a file of bench/) with the given node flags and waits for its first
   * message; `name` says which process failed when it exits before sending one.
   */
  static async fork<Request, Message extends { type: string }>(
    name: string,
    script: string,
    options: { args?: string[]; nodeFlags?: string[]; env?: NodeJS.ProcessEnv },
  ): Promise<BenchChild<Request, Message>> {
    const child = fork(fileURLToPath(new URL(`./${script}`, import.meta.url)), options.args ?? [], {
      execArgv: [...(options.nodeFlags ?? []), "--conditions=development", "--import", "tsx"],
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    const first = await new Promise<Message>((resolve, reject) => {
      child.once("message", resolve);
      child.once("exit", (code) => reject(new Error(`${name} exited with ${String(code)}`)));
    });
    return new BenchChild<Request, Message>(child, first);
  }

  /** Sends `message`; with `answer`, resolves with the next message of that type. */
  request(message: Request, answer?: Message["type"]): Promise<Message | undefined> {
    return new Promise((resolve) => {
      if (answer) {
        const on = (m: Message) => {
          if (m.type !== answer) return;
          this.child.off("message", on);
          resolve(m);
        };
        this.child.on("message", on);
      } else resolve(undefined);
      this.child.send(message as object);
    });
  }

  /** Sends `stop` and waits for `stopped` or its exit; kills it after 5 s. */
  async stop(stop: Request, stopped: Message["type"]): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    await Promise.race([this.request(stop, stopped), exited]);
    const timer = setTimeout(() => this.child.kill(), 5000);
    await exited;
    clearTimeout(timer);
  }

  kill(): void {
    this.child.kill();
  }
}
