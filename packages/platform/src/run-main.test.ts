import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ConfigError, commonEnv } from "./config.js";
import { Code, NearhubError } from "./errors.js";
import { runMain, runServiceMain, type Stoppable } from "./run-main.js";

/**
 * runMain in this process: process.exit and stderr are mocked, signals are emitted rather than
 * sent, and the 10 s hard-stop timer is a mock that never fires. The listeners runMain adds are
 * removed afterwards.
 */
function harness(t: TestContext) {
  const exits: number[] = [];
  let exited!: (code: number) => void;
  const firstExit = new Promise<number>((resolve) => (exited = resolve));
  t.mock.method(process, "exit", ((code?: number) => {
    exits.push(code ?? 0);
    exited(code ?? 0);
  }) as never);
  let stderr = "";
  t.mock.method(process.stderr, "write", ((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  }) as never);
  t.mock.timers.enable({ apis: ["setTimeout"] });
  // "disconnect" is not a signal, but listeners() and removeListener() treat every name alike.
  const events = ["SIGINT", "SIGTERM", "disconnect"] as NodeJS.Signals[];
  const before = new Map(events.map((e) => [e, process.listeners(e)]));
  t.after(() => {
    for (const e of events) {
      for (const l of process.listeners(e)) if (!before.get(e)?.includes(l)) process.removeListener(e, l);
    }
  });
  return {
    exits,
    firstExit,
    stderr: () => stderr,
    signal: (s: "SIGINT" | "SIGTERM") => process.emit(s, s),
  };
}

/** A service whose stop() is recorded and can be held open. */
function service(log: string[], stop: () => Promise<void> = async () => undefined): Stoppable {
  return {
    stop: async () => {
      log.push("stop");
      await stop();
      log.push("stopped");
    },
  };
}

describe("runMain", () => {
  test("a configuration error prints every problem, without a stack, and exits 1", async (t) => {
    const h = harness(t);
    runMain("sync", async () => {
      throw new ConfigError("sync", ['NATS_URL must be nats://host:port (got "x")', 'LOG_LEVEL must be … (got "y")']);
    });
    assert.equal(await h.firstExit, 1);
    assert.equal(
      h.stderr(),
      'sync: invalid configuration (2 problems):\n  - NATS_URL must be nats://host:port (got "x")\n  - LOG_LEVEL must be … (got "y")\n',
    );
  });

  test("a NearhubError at start-up prints its message, not a stack, and exits 1", async (t) => {
    const h = harness(t);
    runMain("sync", async () => {
      throw new NearhubError(Code.Unavailable, "cannot reach NATS at nats://127.0.0.1:1");
    });
    assert.equal(await h.firstExit, 1);
    assert.equal(h.stderr(), "sync: cannot start: cannot reach NATS at nats://127.0.0.1:1\n");
  });

  test("an unexpected error at start-up prints its stack and exits 1", async (t) => {
    const h = harness(t);
    runMain("sync", async () => {
      throw new TypeError("x is not a function");
    });
    assert.equal(await h.firstExit, 1);
    assert.match(h.stderr(), /^sync: cannot start: TypeError: x is not a function\n\s+at /);
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} stops the service and exits 0`, async (t) => {
      const h = harness(t);
      const log: string[] = [];
      let started!: () => void;
      const up = new Promise<void>((resolve) => (started = resolve));
      runMain("sync", async () => {
        started();
        return service(log);
      });
      await up;
      await Promise.resolve();
      h.signal(signal);
      assert.equal(await h.firstExit, 0);
      assert.deepEqual(log, ["stop", "stopped"]);
      assert.deepEqual(h.exits, [0]);
    });
  }

  test("a stop that fails exits 1 and says why", async (t) => {
    const h = harness(t);
    let started!: () => void;
    const up = new Promise<void>((resolve) => (started = resolve));
    runMain("sync", async () => {
      started();
      return {
        stop: async () => {
          throw new Error("NATS drain failed");
        },
      };
    });
    await up;
    await Promise.resolve();
    h.signal("SIGTERM");
    assert.equal(await h.firstExit, 1);
    assert.equal(h.stderr(), "sync: error while stopping: NATS drain failed\n");
  });

  test("a second signal while stopping exits at once with 130", async (t) => {
    const h = harness(t);
    const log: string[] = [];
    let started!: () => void;
    const up = new Promise<void>((resolve) => (started = resolve));
    runMain("sync", async () => {
      started();
      return service(log, () => new Promise(() => undefined));
    });
    await up;
    await Promise.resolve();
    h.signal("SIGTERM");
    assert.deepEqual(log, ["stop"]);
    h.signal("SIGINT");
    assert.equal(await h.firstExit, 130);
    assert.equal(h.stderr(), "sync: second SIGINT, exiting now\n");
  });

  test("a signal during start-up waits for the service, stops it, then exits 0", async (t) => {
    const h = harness(t);
    const log: string[] = [];
    let finishStart!: () => void;
    const startGate = new Promise<void>((resolve) => (finishStart = resolve));
    runMain("sync", async () => {
      log.push("starting");
      await startGate;
      log.push("started");
      return service(log);
    });
    h.signal("SIGTERM");
    await Promise.resolve();
    assert.deepEqual(h.exits, [], "no exit while the service is still starting");
    finishStart();
    assert.equal(await h.firstExit, 0);
    assert.deepEqual(log, ["starting", "started", "stop", "stopped"]);
  });

  test("when the supervisor's IPC channel goes away the service stops", async (t) => {
    const h = harness(t);
    const log: string[] = [];
    const hadSend = Object.prototype.hasOwnProperty.call(process, "send");
    process.send = () => true;
    t.after(() => {
      if (!hadSend) delete process.send;
    });
    let started!: () => void;
    const up = new Promise<void>((resolve) => (started = resolve));
    runMain("sync", async () => {
      started();
      return service(log);
    });
    await up;
    await Promise.resolve();
    process.emit("disconnect");
    assert.equal(await h.firstExit, 0);
    assert.deepEqual(log, ["stop", "stopped"]);
  });

  test("a service that does not stop within 10 s is cut off with exit 1", async (t) => {
    const h = harness(t);
    let started!: () => void;
    const up = new Promise<void>((resolve) => (started = resolve));
    runMain("sync", async () => {
      started();
      return service([], () => new Promise(() => undefined));
    });
    await up;
    await Promise.resolve();
    h.signal("SIGTERM");
    t.mock.timers.tick(10_000);
    assert.equal(await h.firstExit, 1);
    assert.equal(h.stderr(), "sync: did not stop within 10 s, exiting\n");
  });
});

describe("runServiceMain", () => {
  test("parses the environment first and lists every bad variable", async (t) => {
    const h = harness(t);
    const saved = { NATS_URL: process.env["NATS_URL"], LOG_LEVEL: process.env["LOG_LEVEL"] };
    process.env["NATS_URL"] = "http://nope";
    process.env["LOG_LEVEL"] = "loud";
    t.after(() => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });
    let started = false;
    runServiceMain("audit", commonEnv, async () => {
      started = true;
      return { stop: async () => undefined };
    });
    assert.equal(await h.firstExit, 1);
    assert.equal(started, false);
    assert.match(h.stderr(), /^audit: invalid configuration \(2 problems\):/);
    assert.match(h.stderr(), /NATS_URL must be nats:\/\/host:port/);
    assert.match(h.stderr(), /LOG_LEVEL must be one of/);
  });
});

// One end-to-end case in a real process: a real SIGTERM, real exit code, telemetry started.
describe("runServiceMain in a process of its own", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "nearhub-run-main-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("hands the parsed configuration to start, stops on SIGTERM and exits 0", async () => {
    const file = join(dir, "main.ts");
    const runMainUrl = pathToFileURL(join(import.meta.dirname, "run-main.ts")).href;
    const configUrl = pathToFileURL(join(import.meta.dirname, "config.ts")).href;
    await writeFile(
      file,
      `import { runServiceMain } from ${JSON.stringify(runMainUrl)};
import { commonEnv } from ${JSON.stringify(configUrl)};
runServiceMain("audit", commonEnv, async (config) => {
  console.log("namespace=" + config.NEARHUB_NAMESPACE);
  const keepAlive = setInterval(() => undefined, 1000);
  return { stop: async () => { clearInterval(keepAlive); console.log("stopped"); } };
});
`,
    );
    const child: ChildProcess = spawn(process.execPath, ["--conditions=development", "--import", "tsx", file], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NEARHUB_NAMESPACE: "tfromenv", NATS_URL: "", OTEL_EXPORTER_OTLP_ENDPOINT: "" },
    });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      if (stdout.includes("namespace=")) child.kill("SIGTERM");
    });
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    assert.equal(code, 0, stderr);
    assert.deepEqual(stdout.trim().split("\n"), ["namespace=tfromenv", "stopped"]);
  });
});
