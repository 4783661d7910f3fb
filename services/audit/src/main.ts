import { runServiceMain } from "@nearhub/platform";
import { auditEnv } from "./config.js";
import { startAudit } from "./service.js";

runServiceMain("audit", auditEnv, startAudit);
