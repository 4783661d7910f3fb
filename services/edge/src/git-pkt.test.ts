import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { describe, test } from "node:test";
import { checkPktLines } from "./git-pkt.js";
import { allowedByPatterns, checkRepoName } from "./git-http.js";
import { validGithubSignature } from "./git-mirror-api.js";

const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, "0")}${s}`;

describe("pkt-line framing", () => {
  test("accepts what git sends: data lines, flush, delimiter, response-end", () => {
    const body = Buffer.from(
      `${pkt("command=fetch\n")}0001${pkt("want " + "a".repeat(40) + "\n")}${pkt("done\n")}00000002`,
    );
    assert.equal(checkPktLines(body), undefined);
    assert.equal(checkPktLines(Buffer.alloc(0)), undefined);
  });

  test("refuses enormous, short, truncated and non-hex lengths with the byte offset", () => {
    assert.match(
      checkPktLines(Buffer.from("ffff" + "x".repeat(10))) ?? "",
      /at byte 0 declares length 65535, above git's 65520-byte limit/,
    );
    assert.match(checkPktLines(Buffer.from("0003")) ?? "", /declares length 3/);
    assert.match(
      checkPktLines(Buffer.from(`${pkt("ok\n")}0010abc`)) ?? "",
      /at byte 7 declares 16 bytes but the body ends first/,
    );
    assert.match(checkPktLines(Buffer.from("zzzz")) ?? "", /not 4 hex digits/);
    assert.match(checkPktLines(Buffer.from("00")) ?? "", /ends inside a pkt-line length/);
  });
});

describe("clone paths", () => {
  test("normal names pass, with the canonical form", () => {
    assert.equal(checkRepoName("github.com/pytorch/pytorch"), "github.com/pytorch/pytorch");
    assert.equal(checkRepoName("gitlab.com/a_b/c.d-e"), "gitlab.com/a_b/c.d-e");
  });

  test("traversal, NUL, newline, absolute and malformed names are refused with the accepted form", () => {
    for (const bad of [
      "github.com/../x",
      "github.com/a/..",
      "github.com/a/b..c",
      "github.com/a/b\0",
      "github.com/a/b\nc",
      "/github.com/a",
      "GITHUB/a/b",
      "github.com/a",
      "github.com/a/b/c",
      "github.com/.a/b",
      "",
    ]) {
      assert.throws(
        () => checkRepoName(bad),
        /clone URLs look like \/<upstream>\/<owner>\/<repo>\.git/,
        JSON.stringify(bad),
      );
    }
  });

  test("pull-through allow patterns: * within a segment, ** across", () => {
    assert.equal(allowedByPatterns("github.com/acme/x", "github.com/acme/*"), true);
    assert.equal(allowedByPatterns("github.com/other/x", "github.com/acme/*"), false);
    assert.equal(allowedByPatterns("github.com/acme/x", "gitlab.com/**, github.com/**"), true);
    assert.equal(allowedByPatterns("github.com/acme/x", "*"), true);
    assert.equal(allowedByPatterns("github.com/acme/x", ""), false);
    assert.equal(allowedByPatterns("github.comX/acme/x", "github.com/*/*"), false, "dots are literal");
  });
});

describe("GitHub webhook signatures", () => {
  const body = Buffer.from('{"repository":{"full_name":"a/b"}}');
  const good = `sha256=${createHmac("sha256", "k").update(body).digest("hex")}`;
  test("the right HMAC passes; a wrong secret, a tampered body, a missing or odd header fail", () => {
    assert.equal(validGithubSignature("k", body, good), true);
    assert.equal(validGithubSignature("other", body, good), false);
    assert.equal(validGithubSignature("k", Buffer.concat([body, Buffer.from(" ")]), good), false);
    assert.equal(validGithubSignature("k", body, undefined), false);
    assert.equal(validGithubSignature("k", body, "sha1=abc"), false);
    assert.equal(validGithubSignature("k", body, "sha256=zz"), false);
  });
});
