import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, parseEnv } from "@nearhub/platform";
import { s3Settings, storageEnv } from "./config.js";
import { blobStoreFor } from "./service.js";
import { FsBlobStore } from "./fs-blob-store.js";
import { S3BlobStore } from "./s3-blob-store.js";

const s3Env = {
  NEARHUB_BLOB_BACKEND: "s3",
  NEARHUB_S3_ENDPOINT: "https://s3.example.com",
  NEARHUB_S3_BUCKET: "nearhub-blobs",
  NEARHUB_S3_ACCESS_KEY: "AKIA",
  NEARHUB_S3_SECRET_KEY: "secret",
};

test("the fs backend needs no S3 variable", () => {
  assert.ok(blobStoreFor(parseEnv("storage", storageEnv, {})) instanceof FsBlobStore);
});

test("the s3 backend with every variable gives an S3BlobStore and its settings", () => {
  const config = parseEnv("storage", storageEnv, {
    ...s3Env,
    NEARHUB_S3_PATH_STYLE: "false",
    NEARHUB_S3_REGION: "eu-west-1",
  });
  assert.deepEqual(s3Settings(config), {
    endpoint: "https://s3.example.com",
    bucket: "nearhub-blobs",
    region: "eu-west-1",
    accessKey: "AKIA",
    secretKey: "secret",
    pathStyle: false,
  });
  assert.ok(blobStoreFor(config) instanceof S3BlobStore);
});

test("the s3 backend without its variables names every missing one at once", () => {
  const config = parseEnv("storage", storageEnv, { NEARHUB_BLOB_BACKEND: "s3" });
  const error = (() => {
    try {
      blobStoreFor(config);
    } catch (e) {
      return e;
    }
    return assert.fail("expected a ConfigError");
  })();
  assert.ok(error instanceof ConfigError);
  assert.deepEqual(error.problems, [
    "NEARHUB_S3_ENDPOINT is required when NEARHUB_BLOB_BACKEND=s3 (unset)",
    "NEARHUB_S3_BUCKET is required when NEARHUB_BLOB_BACKEND=s3 (unset)",
    "NEARHUB_S3_ACCESS_KEY is required when NEARHUB_BLOB_BACKEND=s3 (unset)",
    "NEARHUB_S3_SECRET_KEY is required when NEARHUB_BLOB_BACKEND=s3 (unset)",
  ]);
  assert.match(error.message, /^storage: invalid configuration \(4 problems\):/);
});

test("an S3 endpoint with a path, a query or credentials is refused with what to do instead", () => {
  for (const endpoint of [
    "http://minio:9000/bucket",
    "http://minio:9000?x=1",
    "http://key:secret@minio:9000",
    "ftp://minio:21",
  ]) {
    const config = parseEnv("storage", storageEnv, { ...s3Env, NEARHUB_S3_ENDPOINT: endpoint });
    assert.throws(
      () => s3Settings(config),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.equal(e.problems.length, 1);
        assert.match(e.problems[0]!, /^NEARHUB_S3_ENDPOINT must /);
        assert.doesNotMatch(e.message, /secret/);
        return true;
      },
      endpoint,
    );
  }
});

test("a trailing slash on the endpoint is dropped", () => {
  const config = parseEnv("storage", storageEnv, { ...s3Env, NEARHUB_S3_ENDPOINT: "http://minio:9000/" });
  assert.equal(s3Settings(config).endpoint, "http://minio:9000");
});
