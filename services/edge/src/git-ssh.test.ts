import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { promisify } from "node:util";
import { authorizeSsh, parseAuthorizedKeys, parseGitCommand, repoFromPath } from "./git-ssh.js";
import { progressible, sideband } from "./git-http.js";

const run = promisify(execFile);
const pkt = (s: string) => `${(Buffer.byteLength(s) + 4).toString(16).padStart(4, "0")}${s}`;

describe("git over SSH: commands, paths and keys", () => {
  test("parses what git sends and nothing more", () => {
    assert.deepEqual(parseGitCommand("git-upload-pack '/github.com/acme/demo.git'"), {
      service: "git-upload-pack",
      path: "/github.com/acme/demo.git",
    });
    assert.deepEqual(parseGitCommand("git upload-pack 'github.com/acme/demo'"), {
      service: "git-upload-pack",
      path: "github.com/acme/demo",
    });
    assert.equal(parseGitCommand("git-receive-pack '/a/b/c.git'")?.service, "git-receive-pack");
    for (const bad of [
      "ls /",
      "git-upload-pack '/a/b/c.git'; id",
      "git-upload-pack '/a b/c'",
      "bash -c x",
      "git-upload-pack '/x' '/y'",
    ]) {
      assert.equal(parseGitCommand(bad), undefined, bad);
    }
  });

  test("paths are checked like clone URLs", () => {
    assert.equal(repoFromPath("/github.com/acme/demo.git"), "github.com/acme/demo");
    assert.equal(repoFromPath("github.com/acme/demo/"), "github.com/acme/demo");
    for (const bad of [
      "/github.com/acme/../etc.git",
      "/../../etc/passwd",
      "/github.com/acme",
      "/github.com/a/b/c.git",
      "/Git Hub/a/b",
      "/github.com/acme/de\u0000mo",
    ]) {
      assert.throws(() => repoFromPath(bad), /not valid/, bad);
    }
  });

  test("authorized_keys: comments are subjects; bad lines are reported, not fatal", async () => {
    const dir = await mkdtemp(join(tmpdir(), "nearhub-sshkeys-"));
    try {
      await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "user:alice", "-f", join(dir, "k")]);
      const pub = (await readFile(join(dir, "k.pub"), "utf8")).trim();
      const bare = pub.split(" ").slice(0, 2).join(" ");
      const { keys, problems } = parseAuthorizedKeys(`# comment\n\n${pub}\n${bare}\nssh-ed25519 not-base64 user:x\n`);
      assert.equal(keys.length, 1);
      assert.equal(keys[0]?.subject, "user:alice");
      assert.equal(problems.length, 2);
      assert.match(problems[0] ?? "", /line 4: .*subject/);
      assert.equal(await authorizeSsh("user:alice", "github.com/acme/demo"), true);
      assert.equal(await authorizeSsh("", "github.com/acme/demo"), false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("progress while a pull-through waits", () => {
  test("sideband frames", () => {
    assert.equal(sideband(2, "hi\n").toString("latin1"), "0008\u0002hi\n");
    assert.equal(sideband(3, "x".repeat(70_000)).length, 65520);
  });

  test("only fetches whose answer starts with the pack are sent progress early", () => {
    const req = (...args: string[]) =>
      Buffer.from(pkt("command=fetch") + pkt("agent=git/2") + "0001" + args.map(pkt).join("") + "0000");
    const want = `want ${"a".repeat(40)}\n`;
    assert.equal(progressible(req("thin-pack", want, "done\n")), true);
    assert.equal(progressible(req("thin-pack", want, "filter blob:none\n", "done\n")), true);
    assert.equal(progressible(req(want)), false, "negotiation: acknowledgments come first");
    assert.equal(progressible(req(want, "deepen 1\n", "done\n")), false, "shallow-info comes first");
    assert.equal(progressible(req("want-ref refs/heads/main\n", "done\n")), false, "wanted-refs comes first");
  });
});
