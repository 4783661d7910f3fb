/** A unique namespace for streams, buckets and subjects on the shared NATS server. */
export declare function uniqueNamespace(prefix?: string): string;
/** A fresh temporary folder, removed by the returned cleanup. */
export declare function tempDir(prefix?: string): Promise<{
    path: string;
    cleanup: () => Promise<void>;
}>;
/** True when a Docker engine answers, so testcontainers can start containers. */
export declare function dockerAvailable(): Promise<boolean>;
/** A JetStream-enabled NATS server for the suite, and how to let it go. */
export interface NatsHandle {
    url: string;
    stop(): Promise<void>;
}
/** The NATS server tests use (one per test process). */
export declare function nats(): Promise<NatsHandle>;
/** Starts `nats-server -js` on a free port with a temporary store. */
export declare function startNatsServer(): Promise<NatsHandle>;
/** An S3 endpoint for the suite. */
export interface S3Handle {
    endpoint: string;
    accessKey: string;
    secretKey: string;
    region: string;
    /** Creates a uniquely named bucket and returns its name. */
    createBucket(): Promise<string>;
    stop(): Promise<void>;
}
/** S3 from S3_ENDPOINT, a MinIO container, or s3rver in-process. */
export declare function s3(): Promise<S3Handle>;
/** An Elasticsearch URL, or the reason there is none (the suite then skips). */
export declare function elasticsearch(): Promise<{
    url: string;
} | {
    skip: string;
}>;
/** The environment of one in-process service under test. */
export declare function serviceEnv(natsUrl: string, namespace: string, dataDir: string, extra?: Record<string, string>): Record<string, string>;
/** Deletes every stream of a namespace (KV buckets are streams too). */
export declare function deleteNamespace(natsUrl: string, namespace: string): Promise<void>;
/** Polls `check` until it returns a value or `timeoutMs` passes. */
export declare function eventually<T>(check: () => Promise<T | undefined>, timeoutMs?: number, what?: string): Promise<T>;
//# sourceMappingURL=harness.d.ts.map