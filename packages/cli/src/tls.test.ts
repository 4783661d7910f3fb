import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ConfigError } from "@nearhub/platform";
import { createTestPki, type TestPki } from "@nearhub/testing";
import { UsageError } from "./command.js";
import { cliTls, grpcCredentials, takeCaOption } from "./tls.js";

describe("--ca", () => {
  test("is taken out of the arguments wherever it stands, in both spellings", () => {
    assert.deepEqual(takeCaOption(["--ca", "/x/ca.pem", "mirror", "list"]), {
      args: ["mirror", "list"],
      ca: "/x/ca.pem",
    });
    assert.deepEqual(takeCaOption(["mirror", "list", "--ca=/y.pem", "--json"]), {
      args: ["mirror", "list", "--json"],
      ca: "/y.pem",
    });
    assert.deepEqual(takeCaOption(["health"]), { args: ["health"], ca: undefined });
  });

  test("without a file is a usage error that shows the form", () => {
    for (const args of [
      ["health", "--ca"],
      ["--ca", "--json", "health"],
      ["--ca=", "health"],
    ]) {
      assert.throws(
        () => takeCaOption(args),
        (error: unknown) => {
          assert.ok(error instanceof UsageError);
          assert.match(error.message, /--ca needs a file/);
          return true;
        },
      );
    }
  });
});

describe("the CLI's TLS settings", () => {
  let pki: TestPki;
  before(async () => {
    pki = await createTestPki();
  });
  after(async () => {
    await pki.cleanup();
  });

  test("nothing set: no TLS, plain gRPC unless the edge URL is https", () => {
    assert.equal(cliTls({}), undefined);
    assert.deepEqual(grpcCredentials({}), {});
    assert.ok(grpcCredentials({ NEARHUB_URL: "https://hub.example.com" }).credentials);
    assert.ok(grpcCredentials({ NEARHUB_CA: pki.ca }).credentials);
  });

  test("a CA and a client certificate are read; hostile files are refused by name", async () => {
    const tls = cliTls({
      NEARHUB_CA: pki.ca,
      NEARHUB_CLIENT_CERT: pki.client.cert,
      NEARHUB_CLIENT_KEY: pki.client.key,
    });
    assert.ok(tls?.client?.ca && tls.client.cert && tls.client.key);
    const junk = join(pki.dir, "junk.pem");
    await writeFile(junk, "hello");
    const problems = (env: NodeJS.ProcessEnv): string[] => {
      try {
        cliTls(env);
      } catch (error) {
        assert.ok(error instanceof ConfigError);
        return error.problems;
      }
      return assert.fail("expected a ConfigError");
    };
    assert.match(
      problems({ NEARHUB_CA: join(pki.dir, "missing.pem") })[0]!,
      /CA bundle: there is no file at .*missing\.pem/,
    );
    assert.match(problems({ NEARHUB_CA: junk })[0]!, /junk\.pem holds no PEM certificate/);
    assert.match(problems({ NEARHUB_CLIENT_CERT: pki.client.cert })[0]!, /needs its key/);
    assert.match(
      problems({ NEARHUB_CLIENT_CERT: pki.client.cert, NEARHUB_CLIENT_KEY: junk }).join("\n"),
      /client key: .*junk\.pem is not a readable PEM private key/,
    );
    assert.match(
      problems({ NEARHUB_CLIENT_CERT: pki.client.cert, NEARHUB_CLIENT_KEY: pki.server.key })[0]!,
      /does not belong to the certificate/,
    );
  });
});
