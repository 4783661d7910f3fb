export { Access } from "./access.js";
export type { AccessSource, Credentials } from "./access.js";
export { authEnv } from "./config.js";
export type { AuthConfig } from "./config.js";
export { asService, currentPrincipal, runAs } from "./context.js";
export { IDENTITY_HEADER, IdentitySigner } from "./identity.js";
export { OidcVerifier } from "./oidc.js";
export type { OidcOptions } from "./oidc.js";
export {
  PERMISSIONS,
  ROLES,
  ROLE_PERMISSIONS,
  isPermission,
  isRole,
  matchesPattern,
  patternProblem,
} from "./permissions.js";
export type { Permission, Role } from "./permissions.js";
export { ANONYMOUS, BLOBS, Policy } from "./policy.js";
export type { AccessDecision, BindingRecord, TokenRecord } from "./policy.js";
export { PolicyStore, RBAC_BUCKET, bindingId, bootstrapRecord } from "./policy-store.js";
export type { NewToken } from "./policy-store.js";
export { TOKEN_PREFIX, generateToken, hashSecret, parseToken, secretMatches } from "./tokens.js";
