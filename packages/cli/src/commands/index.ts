import type { Command } from "../command.js";
import { auditCommand } from "./audit.js";
import { downloadCommand } from "./download.js";
import { healthCommand } from "./health.js";
import { indexCommand } from "./index-cmd.js";
import { mirrorCommand } from "./mirror.js";
import { modelCommand } from "./model.js";
import { searchCommand } from "./search.js";
import { roleCommand, tokenCommand, whoamiCommand } from "./token.js";
import { upCommand } from "./up.js";
import { uploadCommand } from "./upload.js";

/** Every `nearhub` command, in the order `--help` lists them. */
export const commands: Command[] = [
  upCommand,
  mirrorCommand,
  searchCommand,
  indexCommand,
  auditCommand,
  healthCommand,
  uploadCommand,
  downloadCommand,
  modelCommand,
  tokenCommand,
  roleCommand,
  whoamiCommand,
];
