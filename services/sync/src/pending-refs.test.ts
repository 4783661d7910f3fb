import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { lsRefsResponse, parseUpstreamRefs, parseV2Request } from "./pending-refs.js";

const pkt = (s: string) => `${(Buffer.byteLength(s) + 4).toString(16).padStart(4, "0")}${s}`;
const A = "a".repeat(40);
const B = "b".repeat(40);
const C = "c".repeat(40);

describe("answering v2 ls-refs from the upstream's refs before a first sync", () => {
  const lsRemote = [
    "ref: refs/heads/main\tHEAD",
    `${A}\tHEAD`,
    `${A}\trefs/heads/main`,
    `${B}\trefs/heads/feature`,
    `${C}\trefs/tags/v1`,
    `${A}\trefs/tags/v1^{}`,
    `${B}\trefs/pull/1/head`,
  ].join("\n");
  const refs = parseUpstreamRefs(lsRemote, (r) => r.startsWith("refs/heads/") || r.startsWith("refs/tags/"));

  test("keeps HEAD and the selection, peeled tags apart", () => {
    assert.equal(refs.head, "refs/heads/main");
    assert.deepEqual([...refs.refs.keys()].sort(), ["HEAD", "refs/heads/feature", "refs/heads/main", "refs/tags/v1"]);
    assert.equal(refs.peeled.get("refs/tags/v1"), A);
  });

  test("honours ref-prefix, symrefs and peel like git upload-pack", () => {
    const out = lsRefsResponse(refs, ["symrefs", "peel", "ref-prefix HEAD", "ref-prefix refs/tags/"]).toString();
    assert.equal(
      out,
      pkt(`${A} HEAD symref-target:refs/heads/main\n`) + pkt(`${C} refs/tags/v1 peeled:${A}\n`) + "0000",
    );
    const plain = lsRefsResponse(refs, []).toString();
    assert.ok(plain.includes(`${B} refs/heads/feature\n`));
    assert.ok(!plain.includes("symref-target") && !plain.includes("peeled:"));
    assert.ok(!plain.includes("refs/pull/"), "outside the selection");
  });

  test("parses requests, with or without LF, and refuses malformed ones", () => {
    const body = Buffer.from(
      pkt("command=ls-refs") + pkt("agent=git/2\n") + "0001" + pkt("peel\n") + pkt("ref-prefix HEAD\n") + "0000",
    );
    assert.deepEqual(parseV2Request(body), {
      command: "ls-refs",
      capabilities: ["agent=git/2"],
      args: ["peel", "ref-prefix HEAD"],
    });
    assert.equal(parseV2Request(Buffer.from("zzzz")), undefined);
    assert.equal(parseV2Request(Buffer.from(pkt("command=ls-refs"))), undefined, "no flush");
    assert.equal(parseV2Request(Buffer.from("ffff0000")), undefined, "length past the end");
    assert.equal(parseV2Request(Buffer.from("0000")), undefined, "no command");
  });
});
