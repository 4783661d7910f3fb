import { describe, test } from "node:test";
import assert from "node:assert/strict";
import * as platform from "./index.js";
import { Bus, PermanentError } from "./bus.js";
import { Code, NearhubError } from "./errors.js";
import { RpcServer } from "./rpc-server.js";
import { ServiceHost } from "./service-host.js";

describe("@nearhub/platform public API", () => {
  test("exports exactly the documented values", () => {
    const expected = [
      // transport security
      "EXPIRY_WARNING_DAYS",
      "MIN_TLS_VERSION",
      "TransportSecurity",
      "isLoopback",
      // access control
      "ANONYMOUS",
      "Access",
      "BLOBS",
      "IDENTITY_HEADER",
      "IdentitySigner",
      "OidcVerifier",
      "PERMISSIONS",
      "Policy",
      "PolicyStore",
      "RBAC_BUCKET",
      "ROLES",
      "ROLE_PERMISSIONS",
      "TOKEN_PREFIX",
      "asService",
      "authEnv",
      "bindingId",
      "bootstrapRecord",
      "currentPrincipal",
      "generateToken",
      "hashSecret",
      "isPermission",
      "isRole",
      "matchesPattern",
      "parseToken",
      "patternProblem",
      "runAs",
      "secretMatches",
      "Bus",
      "Code",
      "ConfigError",
      "Decision",
      "HealthReporter",
      "NearhubError",
      "Names",
      "Outcome",
      "PermanentError",
      "RpcServer",
      "widenFlowControlWindows",
      "ServiceHost",
      "ServiceMetrics",
      "ServingStatus",
      "auditStream",
      "closeHttp",
      "codeName",
      "commonEnv",
      "createClient",
      "createLogger",
      "eventsStream",
      "extractFromHeaders",
      "extractFromMetadata",
      "formatZodIssues",
      "httpStatusOf",
      "injectIntoHeaders",
      "injectIntoMetadata",
      "listenHttp",
      "methodDefinition",
      "methodPath",
      "observeHttp",
      "parseEnv",
      "port",
      "publishAudit",
      "runMain",
      "runServiceMain",
      "sendError",
      "sendJson",
      "sendMetrics",
      "serviceDefinition",
      "silentLogger",
      "startOpsServer",
      "startTelemetry",
    ];
    assert.deepEqual(Object.keys(platform).sort(), expected.sort());
  });

  test("re-exports the modules' own objects, so instanceof works across imports", () => {
    assert.equal(platform.Bus, Bus);
    assert.equal(platform.PermanentError, PermanentError);
    assert.equal(platform.NearhubError, NearhubError);
    assert.equal(platform.RpcServer, RpcServer);
    assert.equal(platform.ServiceHost, ServiceHost);
    assert.ok(new platform.NearhubError(platform.Code.NotFound, "x") instanceof NearhubError);
    assert.equal(platform.Code.NotFound, Code.NotFound);
  });
});
