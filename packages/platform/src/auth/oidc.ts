import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyGetKey } from "jose";
import { Code, NearhubError } from "../errors.js";
import type { Principal } from "../rpc-types.js";

/** How to trust JWTs from an OpenID Connect provider. */
export interface OidcOptions {
  issuer: string;
  audience: string;
  /** The provider's JSON Web Key Set URL. */
  jwksUrl: string;
  /** The claim that names the user (default `sub`); the subject becomes `user:<value>`. */
  userClaim?: string;
  /** The claim listing the user's groups (default `groups`); each becomes `group:<name>`. */
  groupsClaim?: string;
}

/** Asymmetric algorithms only: `none` and shared-secret HS* tokens are refused. */
const ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"];
const NAME = /^[A-Za-z0-9._@+=:-]{1,128}$/;

/** Verifies OIDC JWTs against the provider's JWKS and maps their claims to a principal. */
export class OidcVerifier {
  private readonly jwks: JWTVerifyGetKey;

  constructor(private readonly options: OidcOptions) {
    this.jwks = createRemoteJWKSet(new URL(options.jwksUrl), { timeoutDuration: 5000, cooldownDuration: 30_000 });
  }

  async verify(jwt: string): Promise<Principal> {
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(jwt, this.jwks, {
        issuer: this.options.issuer,
        audience: this.options.audience,
        algorithms: ALGORITHMS,
        clockTolerance: 30,
      }));
    } catch (error) {
      throw new NearhubError(Code.Unauthenticated, `the bearer JWT was refused: ${explain(error)}`);
    }
    const user = payload[this.options.userClaim ?? "sub"];
    if (typeof user !== "string" || !NAME.test(user))
      throw new NearhubError(
        Code.Unauthenticated,
        `the bearer JWT has no usable '${this.options.userClaim ?? "sub"}' claim (1-128 letters, digits and ._@+=:-)`,
      );
    const rawGroups = payload[this.options.groupsClaim ?? "groups"];
    const groups = Array.isArray(rawGroups)
      ? rawGroups.filter((g): g is string => typeof g === "string" && NAME.test(g)).map((g) => `group:${g}`)
      : [];
    return { subject: `user:${user}`, groups, method: "oidc" };
  }
}

function explain(error: unknown): string {
  if (error instanceof errors.JWTExpired) return "it has expired";
  if (error instanceof errors.JWTClaimValidationFailed) return `claim '${error.claim}' is wrong (${error.reason})`;
  if (error instanceof errors.JOSEAlgNotAllowed)
    return "its algorithm is not allowed (use an asymmetric one such as RS256 or ES256)";
  if (error instanceof errors.JWSSignatureVerificationFailed) return "its signature does not verify";
  if (error instanceof errors.JWKSNoMatchingKey) return "no key of the provider's JWKS matches it";
  if (error instanceof errors.JWKSTimeout) return "the provider's JWKS did not answer in time";
  if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) return "it is malformed";
  if (error instanceof errors.JOSEError) return error.message;
  return "it could not be verified";
}
