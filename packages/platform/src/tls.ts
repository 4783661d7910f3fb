import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  createServer as createPlainServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from "node:http";
import { createServer as createSecureServer, type AgentOptions } from "node:https";
import { createSecureContext, type SecureContextOptions } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { ConfigError, type CommonConfig } from "./config.js";
import type { Logger } from "./logger.js";

/** The oldest protocol any nearhub listener or client accepts; Node negotiates TLS 1.3 first. */
export const MIN_TLS_VERSION = "TLSv1.2";
/** A certificate closer than this to its end is logged as a warning at start-up. */
export const EXPIRY_WARNING_DAYS = 14;

/**
 * Mutual TLS on a listener. `none`: no client certificate asked. `request`: asked for; one that
 * verifies against NEARHUB_TLS_CA identifies the caller (`socket.authorized`, gRPC's auth
 * context), a missing or unverified one leaves the caller anonymous for tokens to decide.
 * `require`: a certificate signed by NEARHUB_TLS_CA or no connection.
 */
export type ClientAuth = "none" | "request" | "require";

/** The variables {@link TransportSecurity.load} reads (a subset of the common ones). */
export type TlsEnv = Pick<
  CommonConfig,
  "NEARHUB_TLS_CERT" | "NEARHUB_TLS_KEY" | "NEARHUB_TLS_CA" | "NEARHUB_TLS_CLIENT_AUTH" | "NEARHUB_TLS_SERVICE_CALLS"
>;

/** What a TLS listener presents and whom it lets in. */
export interface ServerTls {
  certFile: string;
  cert: Buffer;
  key: Buffer;
  /** Verifies client certificates (mutual TLS). */
  ca?: Buffer;
  clientAuth: ClientAuth;
  /** The leaf certificate, for its dates and subject. */
  leaf: X509Certificate;
}

/** How this process calls TLS peers: whom it trusts and which identity it shows. */
export interface ClientTls {
  /** Trusted CAs; the system roots when absent. */
  ca?: Buffer;
  /** Client certificate and key for mutual TLS. */
  cert?: Buffer;
  key?: Buffer;
}

/** Files a client reads for {@link TransportSecurity.client}. */
export interface ClientTlsFiles {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|::1|\[::1\]|::ffff:127(\.\d{1,3}){3})$/i;

/** Whether a bind address only accepts connections from this machine. */
export function isLoopback(host: string): boolean {
  return LOOPBACK.test(host.trim());
}

/**
 * The transport security of one process, read once at start-up: the certificate its listeners
 * present (plain text without one), mutual TLS, and how it calls other services. Every listener
 * and client built here refuses anything older than TLS 1.2; Node prefers TLS 1.3.
 */
export class TransportSecurity {
  private constructor(
    /** Listener TLS; undefined means plain text. */
    readonly server: ServerTls | undefined,
    /** Outgoing TLS; undefined means plain-text calls. */
    readonly client: ClientTls | undefined,
  ) {}

  /** Plain text everywhere (no certificate configured). */
  static plain(): TransportSecurity {
    return new TransportSecurity(undefined, undefined);
  }

  /**
   * Reads and checks the configured PEM files. Throws one {@link ConfigError} listing every
   * problem (missing or unreadable file, certificate without key, key of another certificate,
   * certificate expired or not yet valid); warns when the certificate ends within 14 days.
   */
  static load(service: string, env: TlsEnv, options: { logger?: Logger; now?: Date } = {}): TransportSecurity {
    const now = options.now ?? new Date();
    const problems: string[] = [];
    const certFile = env.NEARHUB_TLS_CERT;
    const keyFile = env.NEARHUB_TLS_KEY;
    const caFile = env.NEARHUB_TLS_CA;
    const clientAuth = env.NEARHUB_TLS_CLIENT_AUTH;
    if (certFile && !keyFile)
      problems.push(`NEARHUB_TLS_KEY is unset but NEARHUB_TLS_CERT is set: give the PEM private key of ${certFile}`);
    if (keyFile && !certFile)
      problems.push(`NEARHUB_TLS_CERT is unset but NEARHUB_TLS_KEY is set: give the PEM certificate of ${keyFile}`);
    if (clientAuth !== "none" && !certFile)
      problems.push(
        `NEARHUB_TLS_CLIENT_AUTH=${clientAuth} needs NEARHUB_TLS_CERT and NEARHUB_TLS_KEY: mutual TLS runs over TLS`,
      );
    if (clientAuth !== "none" && !caFile)
      problems.push(
        `NEARHUB_TLS_CLIENT_AUTH=${clientAuth} needs NEARHUB_TLS_CA, the CA that signs client certificates`,
      );

    const certs = certFile ? readCertificates("NEARHUB_TLS_CERT", certFile, problems) : undefined;
    const key = keyFile ? readPrivateKey("NEARHUB_TLS_KEY", keyFile, problems) : undefined;
    const cas = caFile ? readCertificates("NEARHUB_TLS_CA", caFile, problems) : undefined;
    const leaf = certs?.parsed[0];
    if (leaf && certFile) {
      const from = new Date(leaf.validFrom);
      const to = new Date(leaf.validTo);
      const dates = `valid from ${from.toISOString()} to ${to.toISOString()}`;
      if (now < from)
        problems.push(
          `NEARHUB_TLS_CERT: the certificate in ${certFile} (${leaf.subject.replace(/\n/g, ", ")}) is not valid yet: ${dates}; check the clock or issue a current one`,
        );
      else if (now > to)
        problems.push(
          `NEARHUB_TLS_CERT: the certificate in ${certFile} (${leaf.subject.replace(/\n/g, ", ")}) expired: ${dates}; renew it`,
        );
      else if (to.getTime() - now.getTime() < EXPIRY_WARNING_DAYS * 86_400_000)
        options.logger?.warn(`the TLS certificate expires in less than ${EXPIRY_WARNING_DAYS} days; renew it`, {
          file: certFile,
          not_after: to.toISOString(),
          days_left: Math.floor((to.getTime() - now.getTime()) / 86_400_000),
        });
      if (key?.object && keyFile && !leaf.checkPrivateKey(key.object))
        problems.push(
          `NEARHUB_TLS_KEY: the key in ${keyFile} does not belong to the certificate in ${certFile}; give the key the certificate was issued for`,
        );
    }
    if (problems.length > 0) throw new ConfigError(service, problems);

    const server =
      certs && key && certFile
        ? {
            certFile,
            cert: certs.pem,
            key: key.pem,
            ...(cas ? { ca: cas.pem } : {}),
            clientAuth,
            leaf: leaf as X509Certificate,
          }
        : undefined;
    const callsUseTls = (env.NEARHUB_TLS_SERVICE_CALLS ?? (certFile || caFile ? "tls" : "plain")) === "tls";
    const client = callsUseTls
      ? { ...(cas ? { ca: cas.pem } : {}), ...(certs && key ? { cert: certs.pem, key: key.pem } : {}) }
      : undefined;
    return new TransportSecurity(server, client);
  }

  /** Client-side TLS only (the CLI): trusted CAs and an optional client certificate. */
  static client(files: ClientTlsFiles): TransportSecurity {
    const problems: string[] = [];
    if (Boolean(files.cert) !== Boolean(files.key))
      problems.push("a client certificate needs its key and a key its certificate: give both or neither");
    const ca = files.ca ? readCertificates("CA bundle", files.ca, problems) : undefined;
    const cert = files.cert ? readCertificates("client certificate", files.cert, problems) : undefined;
    const key = files.key ? readPrivateKey("client key", files.key, problems) : undefined;
    if (cert?.parsed[0] && key && !cert.parsed[0].checkPrivateKey(key.object))
      problems.push(
        `client key: the key in ${String(files.key)} does not belong to the certificate in ${String(files.cert)}`,
      );
    if (problems.length > 0) throw new ConfigError("nearhub", problems);
    return new TransportSecurity(undefined, {
      ...(ca ? { ca: ca.pem } : {}),
      ...(cert && key ? { cert: cert.pem, key: key.pem } : {}),
    });
  }

  /**
   * The same certificate without mutual TLS: for the metrics and health port, which kubelet
   * probes and Prometheus scrapes reach without client certificates.
   */
  withoutClientAuth(): TransportSecurity {
    if (!this.server || this.server.clientAuth === "none") return this;
    return new TransportSecurity({ ...this.server, clientAuth: "none" }, this.client);
  }

  /** Whether listeners speak TLS. */
  get enabled(): boolean {
    return this.server !== undefined;
  }

  /** Warns when listeners speak plain text on an address other machines can reach. */
  warnIfPlainText(host: string, logger: Logger, listeners: string[]): void {
    if (this.server || isLoopback(host)) return;
    logger.warn(
      `plain text on ${host}: ${listeners.join(", ")} accept unencrypted connections from the network; set NEARHUB_TLS_CERT and NEARHUB_TLS_KEY, or bind to 127.0.0.1`,
      { bind_host: host, listeners },
    );
  }

  /** The options of a TLS listener (https, tls); undefined in plain text. */
  serverOptions(): (SecureContextOptions & { requestCert: boolean; rejectUnauthorized: boolean }) | undefined {
    const s = this.server;
    if (!s) return undefined;
    return {
      cert: s.cert,
      key: s.key,
      ...(s.ca ? { ca: s.ca } : {}),
      minVersion: MIN_TLS_VERSION,
      requestCert: s.clientAuth !== "none",
      // `request` lets every client in; only a verified certificate counts as an identity.
      rejectUnauthorized: s.clientAuth === "require",
    };
  }

  /** An HTTP server, over TLS when a certificate is configured. */
  createHttpServer(
    options: ServerOptions,
    handler: RequestListener<typeof IncomingMessage, typeof ServerResponse>,
  ): Server {
    const tls = this.serverOptions();
    if (!tls) return createPlainServer(options, handler);
    return createSecureServer({ ...options, ...tls }, handler);
  }

  /** gRPC server credentials: TLS 1.2+ with the configured mutual TLS, or plain text. */
  grpcServerCredentials(): grpc.ServerCredentials {
    const options = this.serverOptions();
    if (!options) return grpc.ServerCredentials.createInsecure();
    const { requestCert, rejectUnauthorized, minVersion, ...context } = options;
    return new NearhubServerCredentials({ requestCert, rejectUnauthorized, minVersion }, context);
  }

  /** gRPC channel credentials for calls to other services: TLS with the configured CA, or plain text. */
  grpcChannelCredentials(): grpc.ChannelCredentials {
    const c = this.client;
    if (!c) return grpc.credentials.createInsecure();
    return grpc.credentials.createFromSecureContext(createSecureContext({ ...c, minVersion: MIN_TLS_VERSION }));
  }

  /** Options of an `https.Agent` for calls to other services; undefined in plain text. */
  httpsAgentOptions(): AgentOptions | undefined {
    const c = this.client;
    if (!c) return undefined;
    return { ...c, minVersion: MIN_TLS_VERSION };
  }
}

/**
 * grpc-js's `createSsl` can set neither a minimum version nor `request` (asked, not required);
 * these credentials hand Node's TLS options to `http2.createSecureServer`, the path `createSsl`
 * takes too. grpc-js reports a client certificate in the call's auth context only when it
 * verified.
 */
class NearhubServerCredentials extends grpc.ServerCredentials {
  constructor(
    serverOptions: {
      requestCert: boolean;
      rejectUnauthorized: boolean;
      minVersion: SecureContextOptions["minVersion"];
    },
    context: SecureContextOptions,
  ) {
    super(serverOptions, context);
  }

  _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function parseBundle(pem: Buffer): X509Certificate[] {
  return (pem.toString("utf8").match(PEM_CERT) ?? []).map((block) => new X509Certificate(block));
}

function readFile(variable: string, file: string, problems: string[]): Buffer | undefined {
  try {
    return readFileSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    problems.push(
      code === "ENOENT"
        ? `${variable}: there is no file at ${file}; check the path (and the volume mount in a container)`
        : code === "EACCES"
          ? `${variable}: ${file} is not readable by this process (permission denied); fix its owner or mode`
          : code === "EISDIR"
            ? `${variable}: ${file} is a folder; give the PEM file inside it`
            : `${variable}: cannot read ${file}: ${(error as Error).message}`,
    );
    return undefined;
  }
}

function readCertificates(
  variable: string,
  file: string,
  problems: string[],
): { pem: Buffer; parsed: X509Certificate[] } | undefined {
  const pem = readFile(variable, file, problems);
  if (!pem) return undefined;
  try {
    const parsed = parseBundle(pem);
    if (parsed.length === 0) {
      problems.push(
        `${variable}: ${file} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block; convert DER with: openssl x509 -inform der -in ${file} -out cert.pem)`,
      );
      return undefined;
    }
    return { pem, parsed };
  } catch (error) {
    problems.push(`${variable}: ${file} holds a PEM certificate that does not parse: ${(error as Error).message}`);
    return undefined;
  }
}

function readPrivateKey(
  variable: string,
  file: string,
  problems: string[],
): { pem: Buffer; object: KeyObject } | undefined {
  const pem = readFile(variable, file, problems);
  if (!pem) return undefined;
  try {
    return { pem, object: createPrivateKey(pem) };
  } catch (error) {
    const encrypted = /ENCRYPTED/.test(pem.toString("utf8"));
    problems.push(
      encrypted
        ? `${variable}: ${file} is an encrypted private key; give an unencrypted PEM key (openssl pkey -in ${file} -out key.pem)`
        : `${variable}: ${file} is not a readable PEM private key (${(error as Error).message})`,
    );
    return undefined;
  }
}
