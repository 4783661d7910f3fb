import { timingSafeEqual } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join, resolve } from "node:path";
import type { Duplex } from "node:stream";
import { Counter } from "prom-client";
import ssh2 from "ssh2";
import type { AuthContext, Connection, ParsedKey, ServerChannel } from "ssh2";
import { NearhubError, type Logger, type ServiceMetrics } from "@nearhub/platform";
import type { Backends } from "./backends.js";
import type { EdgeConfig } from "./config.js";
import { checkRepoName } from "./git-http.js";
import type { PullThrough } from "./git-pull-through.js";

const { Server, utils } = ssh2;

/** One authorized key: the parsed public key and the subject it stands for (its comment). */
export interface AuthorizedKey {
  key: ParsedKey;
  subject: string;
}

/**
 * Whether `subject` may read `repoName` over SSH. The one place the SSH access decision is
 * made: every authorized key may read every mirror until RBAC (packages/platform/src/auth)
 * is wired in here.
 */
export async function authorizeSsh(subject: string, repoName: string): Promise<boolean> {
  return subject.length > 0 && repoName.length > 0;
}

/** Parses an authorized_keys file; the comment of each line is its RBAC subject (`user:alice`). */
export function parseAuthorizedKeys(text: string): { keys: AuthorizedKey[]; problems: string[] } {
  const keys: AuthorizedKey[] = [];
  const problems: string[] = [];
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    // Options before the key type (from="…", no-pty) are not supported: the line must start with the type.
    const m = /^(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(line);
    const subject = m?.[3]?.trim() ?? "";
    const parsed = m ? utils.parseKey(`${m[1] ?? ""} ${m[2] ?? ""}`) : new Error("not `type base64 subject`");
    if (parsed instanceof Error || Array.isArray(parsed)) {
      problems.push(`line ${i + 1}: ${parsed instanceof Error ? parsed.message : "more than one key"}`);
      continue;
    }
    if (!subject) {
      problems.push(`line ${i + 1}: the key has no comment; write its subject there, e.g. user:alice`);
      continue;
    }
    keys.push({ key: parsed, subject });
  }
  return { keys, problems };
}

/** Parses an SSH exec command git sends: `git-upload-pack '/github.com/acme/demo.git'`. */
export function parseGitCommand(command: string): { service: string; path: string } | undefined {
  const m = /^(git[- ](?:upload-pack|receive-pack|upload-archive))\s+'?([^'\s]*)'?$/.exec(command.trim());
  if (!m) return undefined;
  return { service: (m[1] ?? "").replace(" ", "-"), path: m[2] ?? "" };
}

/** The repository a command's path names, checked like clone URLs over HTTP (no traversal). */
export function repoFromPath(path: string): string {
  const trimmed = path.replace(/^\/+/, "").replace(/\/+$/, "");
  return checkRepoName(trimmed.endsWith(".git") ? trimmed.slice(0, -4) : trimmed);
}

async function loadHostKey(config: EdgeConfig, log: Logger): Promise<Buffer> {
  if (config.NEARHUB_SSH_HOST_KEY) return readFile(config.NEARHUB_SSH_HOST_KEY);
  const dir = resolve(config.NEARHUB_DATA_DIR, "ssh");
  const file = join(dir, "ssh_host_ed25519_key");
  if (existsSync(file)) return readFile(file);
  await mkdir(dir, { recursive: true });
  const pair = utils.generateKeyPairSync("ed25519");
  await writeFile(file, pair.private, { mode: 0o600 });
  await writeFile(`${file}.pub`, `${pair.public}\n`);
  await chmod(file, 0o600);
  log.info("generated an SSH host key", { path: file });
  return Buffer.from(pair.private);
}

/** A running SSH server for git. */
export interface GitSsh {
  port: number;
  close(): Promise<void>;
}

/**
 * Read-only git over SSH (`git clone ssh://git@host:port/github.com/acme/demo.git`) with `ssh2`:
 * public-key authentication against NEARHUB_SSH_AUTHORIZED_KEYS, `authorizeSsh` per repository,
 * `git-upload-pack` bridged to a stateful upload-pack in the sync service over an HTTP upgrade
 * (protocol v0 and v2; GIT_PROTOCOL comes from the SSH `env` request), pull-through with progress
 * on the channel's stderr while a first sync runs. Push, shells and other commands are refused
 * with a message.
 */
export async function startGitSsh(deps: {
  config: EdgeConfig;
  backends: Backends;
  /** The access decision; {@link authorizeSsh} unless given. */
  authorize?: (subject: string, repoName: string) => Promise<boolean>;
  pullThrough: PullThrough;
  logger: Logger;
  metrics: ServiceMetrics;
}): Promise<GitSsh> {
  const { config, pullThrough, backends } = deps;
  const authorize = deps.authorize ?? authorizeSsh;
  const log = deps.logger.child({ component: "git-ssh" });
  const sessions = new Counter({
    name: "nearhub_edge_ssh_sessions_total",
    help: "SSH git sessions by outcome (served, refused, unauthenticated, error)",
    labelNames: ["outcome"],
    registers: [deps.metrics.registry],
  });
  const hostKey = await loadHostKey(config, log);

  let cached: { key: string; keys: AuthorizedKey[] } | undefined;
  const authorizedKeys = async (): Promise<AuthorizedKey[]> => {
    const file = config.NEARHUB_SSH_AUTHORIZED_KEYS;
    if (!file) return [];
    try {
      const s = await stat(file);
      const key = `${s.mtimeMs}:${s.size}`;
      if (cached?.key !== key) {
        const { keys, problems } = parseAuthorizedKeys(await readFile(file, "utf8"));
        if (problems.length > 0) log.warn("authorized_keys lines skipped", { file, problems });
        cached = { key, keys };
      }
      return cached.keys;
    } catch (error) {
      log.error("cannot read NEARHUB_SSH_AUTHORIZED_KEYS; every key is refused", { error, file });
      return [];
    }
  };

  const authenticate = async (ctx: AuthContext): Promise<string | undefined> => {
    if (ctx.method !== "publickey") return undefined;
    for (const { key, subject } of await authorizedKeys()) {
      const pub = key.getPublicSSH();
      if (pub.length !== ctx.key.data.length || !timingSafeEqual(pub, ctx.key.data)) continue;
      if (ctx.signature && ctx.blob && key.verify(ctx.blob, ctx.signature, ctx.hashAlgo) !== true) return undefined;
      return subject;
    }
    return undefined;
  };

  /** Opens a stateful upload-pack on the sync service; "not-mirrored" when it has no such repository. */
  const openUploadPack = (name: string, protocol: string): Promise<Duplex | "not-mirrored"> =>
    new Promise((resolvePack, reject) => {
      // The subject was checked by `authorize`; the sync service is called as the edge itself.
      const req = backends.syncGit.request(
        {
          method: "GET",
          path: `/git/${name}/upload-pack-stream`,
          headers: {
            ...backends.identity(),
            connection: "upgrade",
            upgrade: "git-upload-pack",
            ...(protocol ? { "git-protocol": protocol } : {}),
          },
        },
        () => undefined,
      );
      req.on("upgrade", (_res, socket, head) => {
        if (head.length > 0) socket.unshift(head);
        resolvePack(socket);
      });
      req.on("response", (res) => {
        res.resume();
        if (res.statusCode === 404 && res.headers["x-nearhub-not-mirrored"]) resolvePack("not-mirrored");
        else reject(new Error(`the sync service refused the upload-pack stream (${res.statusCode ?? "?"})`));
      });
      req.on("error", (error) =>
        reject(
          new Error(
            `the sync service's git endpoint at ${config.NEARHUB_SYNC_GIT_URL} is unreachable: ${error.message}`,
          ),
        ),
      );
      req.end();
    });

  const serveUploadPack = async (channel: ServerChannel, name: string, protocol: string): Promise<void> => {
    let pack = await openUploadPack(name, protocol);
    if (pack === "not-mirrored") {
      pullThrough.admit(name);
      const started = Date.now();
      const say = () =>
        channel.stderr.write(
          `nearhub: waiting for the upstream fetch of ${name}… ${Math.round((Date.now() - started) / 1000)}s\r`,
        );
      say();
      const timer = setInterval(say, 1000);
      try {
        await pullThrough.wait(name);
      } finally {
        clearInterval(timer);
      }
      channel.stderr.write(`nearhub: waiting for the upstream fetch of ${name}… done\n`);
      pack = await openUploadPack(name, protocol);
      if (pack === "not-mirrored") throw new Error(`${name} synced but is not on disk yet; retry`);
    }
    const socket = pack;
    socket.on("error", () => channel.close());
    channel.on("close", () => socket.destroy());
    channel.pipe(socket);
    socket.pipe(channel, { end: false });
    await new Promise<void>((done) => socket.on("close", () => done()));
  };

  const server = new Server(
    {
      hostKeys: [hostKey],
      ident: "nearhub",
      // OpenSSL's AES (native, AES-NI) only: OpenSSH clients prefer chacha20-poly1305, which ssh2
      // runs in JavaScript without its native build (not installed: npm's allowScripts denies it).
      algorithms: {
        cipher: ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"],
      },
    },
    (client: Connection) => {
      let subject: string | undefined;
      client.on("error", (error) => log.debug("ssh connection error", { error }));
      client.on("authentication", (ctx) => {
        void authenticate(ctx).then(
          (who) => {
            if (who) {
              subject = who;
              ctx.accept();
            } else {
              if (ctx.method === "publickey" && ctx.signature) sessions.inc({ outcome: "unauthenticated" });
              ctx.reject(["publickey"]);
            }
          },
          () => ctx.reject(["publickey"]),
        );
      });
      client.on("ready", () => {
        client.on("session", (acceptSession) => {
          const session = acceptSession();
          let protocol = "";
          session.on("env", (accept, _reject, info) => {
            if (info.key === "GIT_PROTOCOL" && /^[A-Za-z0-9=:.,_-]{0,200}$/.test(info.val)) protocol = info.val;
            accept?.();
          });
          const refuse = (channel: ServerChannel, message: string) => {
            sessions.inc({ outcome: "refused" });
            channel.stderr.write(`nearhub: ${message}\n`);
            channel.exit(1);
            channel.end();
          };
          session.on("pty", (accept) => accept?.());
          session.on("shell", (accept) => {
            refuse(
              accept(),
              `hi ${subject ?? ""}! you are authenticated, but nearhub gives no shell access; clone with git clone ssh://…/<upstream>/<owner>/<repo>.git`,
            );
          });
          session.on("subsystem", (_accept, reject) => reject?.());
          session.on("exec", (accept, _reject, info) => {
            const channel = accept();
            const command = parseGitCommand(info.command);
            if (!command) return refuse(channel, "only git-upload-pack is served here (git clone, fetch, ls-remote)");
            let name: string;
            try {
              name = repoFromPath(command.path);
            } catch (error) {
              return refuse(channel, NearhubError.from(error).rawMessage);
            }
            if (command.service === "git-receive-pack") {
              return refuse(
                channel,
                `${name} is a read-only mirror; push to the upstream repository instead, and it will be mirrored here.`,
              );
            }
            if (command.service !== "git-upload-pack")
              return refuse(channel, `${command.service} is not served; use git clone or fetch`);
            void (async () => {
              if (!subject || !(await authorize(subject, name))) {
                return refuse(
                  channel,
                  `${subject ?? "this key"} may not read ${name}; ask an administrator for access`,
                );
              }
              await serveUploadPack(channel, name, protocol);
              sessions.inc({ outcome: "served" });
              channel.exit(0);
              channel.end();
            })().catch((error: unknown) => {
              sessions.inc({ outcome: "error" });
              const e = NearhubError.from(error);
              log.warn("ssh upload-pack failed", { mirror: name, subject, error: e.rawMessage });
              if (!channel.destroyed) {
                channel.stderr.write(`nearhub: ${e.rawMessage}\n`);
                channel.exit(1);
                channel.end();
              }
            });
          });
        });
      });
    },
  );
  await new Promise<void>((ready, fail) => {
    server.once("error", fail);
    server.listen(config.NEARHUB_SSH_PORT, config.NEARHUB_BIND_HOST, () => ready());
  });
  const port = (server.address() as AddressInfo).port;
  log.info("git over SSH listening", { port });
  return {
    port,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        // Connections in flight end with the process's other work.
        setTimeout(done, 2000).unref();
      }),
  };
}
