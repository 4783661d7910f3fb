import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

/** git as the sync tests run it: no system or user configuration, a fixed author. */
export const TEST_GIT_ENV: NodeJS.ProcessEnv = {
  ...process.env,
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.com",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.com",
};

/** Runs git with {@link TEST_GIT_ENV} and returns its trimmed output. */
export async function git(args: string[], cwd?: string): Promise<string> {
  return (await run("git", args, { cwd, env: TEST_GIT_ENV })).stdout.trim();
}
