import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { keyIdOf } from "./chain.js";

/** The audit service's Ed25519 checkpoint key. */
export interface SigningKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  keyId: string;
}

/**
 * Loads the PEM private key at `path`, or creates one there (mode 0600) on first start. Keep
 * this file safe and backed up: verification of old checkpoints needs its public half.
 */
export async function loadSigningKey(path: string): Promise<SigningKey> {
  let pem: string;
  try {
    pem = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    const { privateKey } = generateKeyPairSync("ed25519");
    pem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, pem, { mode: 0o600, flag: "wx" }).catch(async (e: NodeJS.ErrnoException) => {
      // Another replica sharing the folder created it first: use theirs.
      if (e.code !== "EEXIST") throw e;
      pem = await readFile(path, "utf8");
    });
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (error) {
    throw new Error(`${path} is not a PEM private key: ${(error as Error).message}`, { cause: error });
  }
  if (privateKey.asymmetricKeyType !== "ed25519") {
    throw new Error(`${path} holds a ${privateKey.asymmetricKeyType ?? "unknown"} key; the audit trail needs Ed25519`);
  }
  const publicKey = createPublicKey(privateKey);
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}
