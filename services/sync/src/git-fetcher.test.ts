import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { GitFetcher, parseLsRemote, selected, type MirrorSpec } from "./git-fetcher.js";
import { serveGitHttpBackend, type HttpBackend } from "./git-http-backend.js";
import { ARCHIVE_PREFIX, RepoLayout, parsePackedRefs, readRefs } from "./git-repo.js";
import { GitError, classifyGitFailure, redact } from "./git-runner.js";
import { git } from "./test-git.js";

describe("GitFetcher against git http-backend", () => {
  let dir: string;
  let origin: HttpBackend;
  let work: string;
  let layout: RepoLayout;
  // Repository → POSTs to let through before the rest stall (ls-remote's ls-refs, the fetch's ls-refs, then the fetch).
  const stall = new Map<string, number>();
  const deny = new Map<string, number>();
  const spec: MirrorSpec = {
    name: "github.com/acme/app",
    upstream: "github.com",
    owner: "acme",
    repo: "app",
    refs: "heads,tags",
  };
  const fetcher = (overrides: Partial<ConstructorParameters<typeof GitFetcher>[0]> = {}) =>
    new GitFetcher({
      layout,
      upstreams: new Map([["github.com", origin.url]]),
      tokens: new Map(),
      lsRemoteTimeoutMs: 20_000,
      fetchTimeoutMs: 20_000,
      cloneTimeoutMs: 20_000,
      lowSpeedLimit: 1,
      lowSpeedTimeS: 30,
      ...overrides,
    });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "nearhub-fetcher-"));
    layout = new RepoLayout(join(dir, "data"));
    await layout.recoverLeftovers();
    origin = await serveGitHttpBackend({
      root: join(dir, "origin"),
      intercept: (req, res) => {
        const repo = /^\/([^/]+\/[^/]+?)\.git\//.exec(req.url ?? "")?.[1] ?? "";
        const status = deny.get(repo);
        if (status) {
          res.writeHead(status).end();
          return true;
        }
        const pass = stall.get(repo);
        if (pass !== undefined && req.method === "POST") {
          stall.set(repo, pass - 1);
          if (pass <= 0) {
            // Accept the request and never answer: an upstream stuck mid-fetch.
            req.resume();
            return true;
          }
        }
        return false;
      },
    });
    await mkdir(join(dir, "origin", "acme"), { recursive: true });
    await git(["init", "--bare", "-q", "-b", "main", join(dir, "origin", "acme", "app.git")]);
    work = join(dir, "work");
    await git(["clone", "-q", join(dir, "origin", "acme", "app.git"), work]);
    await writeFile(join(work, "a.txt"), "one\n");
    await git(["add", "."], work);
    await git(["commit", "-q", "-m", "one"], work);
    await git(["tag", "v1"], work);
    await git(["branch", "topic"], work);
    await git(["push", "-q", "origin", "main", "topic", "v1"], work);
  });

  after(async () => {
    await origin.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("first sync clones through a staging folder and serves exactly upstream's refs", async () => {
    const outcome = await fetcher().sync(spec);
    assert.equal(outcome.firstClone, true);
    assert.equal(outcome.noop, false);
    const repo = layout.pathOf(spec.name);
    const refs = await readRefs(repo);
    assert.deepEqual([...refs.keys()].sort(), ["refs/heads/main", "refs/heads/topic", "refs/tags/v1"]);
    assert.equal(refs.get("refs/heads/main"), await git(["rev-parse", "main"], work));
    assert.equal(await git(["symbolic-ref", "HEAD"], repo), "refs/heads/main");
    assert.deepEqual(readdirSync(layout.tmp), []);
    await git(["fsck", "--no-progress"], repo);
  });

  test("an unchanged upstream is a no-op: ls-remote only, no pack fetched", async () => {
    const before = origin.fetches.get("/acme/app.git") ?? 0;
    const outcome = await fetcher().sync(spec);
    assert.equal(outcome.noop, true);
    assert.deepEqual(outcome.changes, []);
    assert.equal(origin.fetches.get("/acme/app.git") ?? 0, before);
  });

  test("new commits, a force-push and a deletion: refs replaced at once, old tips archived", async () => {
    const repo = layout.pathOf(spec.name);
    const oldTopic = await git(["rev-parse", "topic"], work);
    const oldMain = await git(["rev-parse", "main"], work);
    await writeFile(join(work, "a.txt"), "two\n");
    await git(["commit", "-q", "-am", "two"], work);
    await git(["push", "-q", "origin", "main", ":topic"], work);
    await git(["checkout", "-q", "-b", "wip", oldMain], work);
    await git(["commit", "-q", "--allow-empty", "-m", "wip"], work);
    await git(["push", "-q", "origin", "wip"], work);
    const outcome = await fetcher().sync(spec, { now: new Date(1_700_000_000_000) });
    await git(["checkout", "-q", "main"], work);
    const byRef = new Map(outcome.changes.map((c) => [c.ref, c]));
    assert.deepEqual(byRef.get("refs/heads/main"), {
      ref: "refs/heads/main",
      oldSha: oldMain,
      newSha: await git(["rev-parse", "main"], work),
      forced: false,
    });
    assert.equal(byRef.get("refs/heads/topic")?.newSha, "");
    assert.equal(byRef.get("refs/heads/topic")?.forced, true);
    assert.equal(byRef.get("refs/heads/wip")?.oldSha, "");
    const refs = await readRefs(repo);
    assert.equal(refs.get(`${ARCHIVE_PREFIX}1700000000/heads/topic`), oldTopic);
    assert.ok(!refs.has("refs/heads/topic"));
    // The served repository keeps no loose refs, so packed-refs (renamed into place) is the whole truth.
    assert.equal(
      await git(["for-each-ref", "--format=%(refname)", "refs/heads"], repo),
      "refs/heads/main\nrefs/heads/wip",
    );
    assert.deepEqual(readdirSync(join(repo, "refs", "heads")), []);
    await git(["fsck", "--no-progress"], repo);
  });

  test("a stuck fetch aborted mid-way (or timed out) leaves the served repository intact", async () => {
    const repo = layout.pathOf(spec.name);
    const before = await readRefs(repo);
    await writeFile(join(work, "a.txt"), "three\n");
    await git(["commit", "-q", "-am", "three"], work);
    await git(["push", "-q", "origin", "main"], work);
    const posts = () => origin.requests.get("POST /acme/app.git/git-upload-pack") ?? 0;
    try {
      const controller = new AbortController();
      stall.set("acme/app", 2);
      const before2 = posts();
      const pending = fetcher().sync(spec, { signal: controller.signal });
      // Abort once the pack request itself is waiting on the stuck upstream.
      while (posts() < before2 + 3) await new Promise((r) => setTimeout(r, 20));
      controller.abort();
      await assert.rejects(pending, (e: GitError) => e instanceof GitError && e.kind === "aborted");
      assert.deepEqual(await readRefs(repo), before);
      assert.deepEqual(readdirSync(layout.tmp), []);
      stall.set("acme/app", 2);
      await assert.rejects(
        fetcher({ fetchTimeoutMs: 1500 }).sync(spec),
        (e: GitError) => e.kind === "timeout" && /longer than/.test(e.message),
      );
      assert.deepEqual(await readRefs(repo), before);
      assert.deepEqual(readdirSync(layout.tmp), []);
    } finally {
      stall.delete("acme/app");
    }
    const outcome = await fetcher().sync(spec);
    assert.equal(outcome.changes.length, 1);
  });

  test("upstream answers are classified: 401 → auth, 404 → not-found", async () => {
    deny.set("acme/app", 401);
    await assert.rejects(fetcher().sync(spec), (e: GitError) => e.kind === "auth");
    deny.set("acme/app", 404);
    await assert.rejects(fetcher().sync(spec), (e: GitError) => e.kind === "not-found");
    deny.delete("acme/app");
    await assert.rejects(
      fetcher().sync({ ...spec, name: "github.com/acme/none", repo: "none" }),
      (e: GitError) => e.kind === "not-found",
    );
  });

  test("maintenance drops archive refs past retention and writes bitmaps and the commit-graph", async () => {
    const repo = layout.pathOf(spec.name);
    const result = await fetcher().maintain(spec, 3600);
    assert.equal(result.archivedPruned, 1);
    const refs = await readRefs(repo);
    assert.ok(![...refs.keys()].some((r) => r.startsWith(ARCHIVE_PREFIX)));
    assert.ok(readdirSync(join(repo, "objects", "pack")).some((f) => f.endsWith(".bitmap")));
    assert.ok(existsSync(join(repo, "objects", "info", "commit-graph")));
    await git(["fsck", "--no-progress"], repo);
  });

  test("leftover staging folders are removed at start-up", async () => {
    await mkdir(join(layout.tmp, "crashed.git", "objects"), { recursive: true });
    assert.equal(await layout.recoverLeftovers(), 1);
    assert.deepEqual(readdirSync(layout.tmp), []);
  });
});

describe("git helpers", () => {
  test("parseLsRemote keeps the selection and HEAD's target, drops peeled lines", () => {
    const sha = "a".repeat(40);
    const text = `ref: refs/heads/main\tHEAD\n${sha}\tHEAD\n${sha}\trefs/heads/main\n${sha}\trefs/tags/v1\n${sha}\trefs/tags/v1^{}\n${sha}\trefs/pull/1/head\nnot a line\n`;
    const parsed = parseLsRemote(text, "heads,tags");
    assert.equal(parsed.head, "refs/heads/main");
    assert.deepEqual([...parsed.refs.keys()], ["refs/heads/main", "refs/tags/v1"]);
    assert.deepEqual(
      [...parseLsRemote(text, "all").refs.keys()],
      ["refs/heads/main", "refs/tags/v1", "refs/pull/1/head"],
    );
  });

  test("selected never takes nearhub's own namespaces", () => {
    assert.equal(selected("refs/archive/1/heads/x", "all"), false);
    assert.equal(selected("refs/nearhub/x", "all"), false);
    assert.equal(selected("refs/tags/v1", "heads"), false);
  });

  test("packed-refs parsing skips the header and peeled lines", () => {
    const sha = "b".repeat(40);
    const refs = parsePackedRefs(
      `# pack-refs with: peeled fully-peeled sorted \n${sha} refs/tags/v1\n^${"c".repeat(40)}\n`,
    );
    assert.deepEqual([...refs], [["refs/tags/v1", sha]]);
  });

  test("repository paths cannot leave the repos folder", () => {
    const layout = new RepoLayout("/srv/data");
    assert.equal(layout.pathOf("github.com/a/b"), "/srv/data/git/repos/github.com/a/b.git");
    for (const bad of ["../../etc/passwd", "github.com/../../x", "a/b\0c", "a/b\nc", "/abs/olute/../../../../x"]) {
      assert.throws(() => layout.pathOf(bad), /not a valid path/, bad);
    }
  });

  test("failures are classified and credentials redacted", () => {
    assert.equal(
      classifyGitFailure("fatal: unable to access 'x': The requested URL returned error: 429"),
      "rate-limited",
    );
    assert.equal(classifyGitFailure("fatal: Authentication failed for 'x'"), "auth");
    assert.equal(classifyGitFailure("remote: Repository not found."), "not-found");
    assert.equal(classifyGitFailure("fatal: early EOF"), "other");
    assert.equal(redact("https://user:ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x"), "https://***@github.com/x");
    assert.equal(redact("Authorization: Basic dXNlcjpwYXNz"), "Authorization: ***");
  });
});
