import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { tempDir } from "./index.js";

const run = promisify(execFile);

/** A certificate and its key, as PEM file paths. */
export interface CertFiles {
  cert: string;
  key: string;
}

/** A throw-away certificate authority and leaves made by the real `openssl`, in a temp folder. */
export interface TestPki {
  dir: string;
  /** The CA certificate (PEM path) that signed every leaf below. */
  ca: string;
  /** Valid for 30 days, SAN 127.0.0.1, ::1 and localhost, usable as server and client. */
  server: CertFiles;
  /** A second identity from the same CA, for clients. */
  client: CertFiles;
  /** Expired on 2020-02-01. */
  expired: CertFiles;
  /** Valid from 2099-01-01. */
  notYetValid: CertFiles;
  /** Valid for 3 more days. */
  expiringSoon: CertFiles;
  /** Self-signed, not from the CA: a client the CA does not vouch for. */
  stranger: CertFiles;
  /** Dates as `openssl ca` printed them, for assertions on messages. */
  expiredNotAfter: string;
  cleanup(): Promise<void>;
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/**
 * Builds a test PKI with `openssl req` and `openssl ca` (the only way OpenSSL 3.0 writes a
 * certificate whose validity lies wholly in the past or future: `-startdate`/`-enddate`).
 */
export async function createTestPki(): Promise<TestPki> {
  const tmp = await tempDir("nearhub-pki-");
  const dir = tmp.path;
  await mkdir(join(dir, "newcerts"));
  await writeFile(join(dir, "index.txt"), "");
  await writeFile(join(dir, "serial"), "1000\n");
  const config = join(dir, "ca.cnf");
  await writeFile(
    config,
    [
      "[ca]",
      "default_ca = test",
      "[test]",
      `database = ${join(dir, "index.txt")}`,
      `new_certs_dir = ${join(dir, "newcerts")}`,
      `serial = ${join(dir, "serial")}`,
      `certificate = ${join(dir, "ca.pem")}`,
      `private_key = ${join(dir, "ca.key")}`,
      "default_md = sha256",
      "policy = any",
      "unique_subject = no",
      "copy_extensions = none",
      "[any]",
      "commonName = supplied",
      "[leaf]",
      "basicConstraints = CA:FALSE",
      "keyUsage = critical, digitalSignature",
      "extendedKeyUsage = serverAuth, clientAuth",
      "subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost",
      "",
    ].join("\n"),
  );
  await run("openssl", [
    "req",
    "-x509",
    ...EC,
    "-keyout",
    join(dir, "ca.key"),
    "-out",
    join(dir, "ca.pem"),
    "-days",
    "30",
    "-subj",
    "/CN=nearhub test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  const leaf = async (name: string, dates: string[]): Promise<CertFiles> => {
    const key = join(dir, `${name}.key`);
    const csr = join(dir, `${name}.csr`);
    const cert = join(dir, `${name}.pem`);
    await run("openssl", ["req", "-new", ...EC, "-keyout", key, "-out", csr, "-subj", `/CN=nearhub-test-${name}`]);
    await run("openssl", [
      "ca",
      "-batch",
      "-notext",
      "-config",
      config,
      "-extensions",
      "leaf",
      "-in",
      csr,
      "-out",
      cert,
      ...dates,
    ]);
    return { cert, key };
  };
  const server = await leaf("server", ["-days", "30"]);
  const client = await leaf("client", ["-days", "30"]);
  const expired = await leaf("expired", ["-startdate", "20200101000000Z", "-enddate", "20200201000000Z"]);
  const notYetValid = await leaf("future", ["-startdate", "20990101000000Z", "-enddate", "20990201000000Z"]);
  const expiringSoon = await leaf("soon", ["-days", "3"]);
  const stranger = { cert: join(dir, "stranger.pem"), key: join(dir, "stranger.key") };
  await run("openssl", [
    "req",
    "-x509",
    ...EC,
    "-keyout",
    stranger.key,
    "-out",
    stranger.cert,
    "-days",
    "30",
    "-subj",
    "/CN=nearhub-test-stranger",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
  ]);
  return {
    dir,
    ca: join(dir, "ca.pem"),
    server,
    client,
    expired,
    notYetValid,
    expiringSoon,
    stranger,
    expiredNotAfter: "2020-02-01T00:00:00.000Z",
    cleanup: tmp.cleanup,
  };
}
