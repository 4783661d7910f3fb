import type { Command } from "../command.js";
import { healthCommand } from "./health.js";
import { mirrorCommand } from "./mirror.js";
import { searchCommand } from "./search.js";
import { upCommand } from "./up.js";

/** Every `nearhub` command, in the order `--help` lists them. */
export const commands: Command[] = [upCommand, mirrorCommand, searchCommand, healthCommand];
