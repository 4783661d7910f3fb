import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse, parseAllDocuments } from "yaml";
import { ConfigError, parseEnv, parseToken } from "@nearhub/platform";
import type { CommonConfig } from "@nearhub/platform";
import { auditEnv } from "@nearhub/audit";
import { edgeEnv } from "@nearhub/edge";
import { indexingEnv } from "@nearhub/indexing";
import { inferenceEnv } from "@nearhub/inference-gateway";
import { STREAMING_MALLOC_TUNABLES, s3Settings, storageEnv } from "@nearhub/storage";
import { syncEnv } from "@nearhub/sync";
import { loadCompose, requiredValues } from "./compose-file.js";

/** Read by the C library, libuv or node at start-up, not by a service's configuration. */
const RUNTIME_ENV = new Set(["GLIBC_TUNABLES", "UV_THREADPOOL_SIZE", "NODE_OPTIONS"]);

// No cluster runs here, so the Kubernetes manifests (infra/k8s, a kustomization) are checked
// statically, the way tests/compose.test.ts checks docker-compose.yml: every nearhub
// Deployment's environment must pass that service's own configuration schema, and the wiring
// operators rely on (probes, ports, Services, replicas, disruption budgets, NATS fsync, the
// bucket, security) must hold together.
const root = fileURLToPath(new URL("..", import.meta.url));
const k8sDir = join(root, "infra/k8s");

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    secretKeyRef?: { name: string; key: string };
    configMapKeyRef?: { name: string; key: string };
    fieldRef?: { fieldPath: string };
  };
}
interface Probe {
  httpGet?: { path: string; port: string | number };
  tcpSocket?: { port: string | number };
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  allowPrivilegeEscalation?: boolean;
  readOnlyRootFilesystem?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
  privileged?: boolean;
}
interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  envFrom?: Array<{ configMapRef?: { name: string }; secretRef?: { name: string } }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: SecurityContext;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  securityContext?: SecurityContext & { fsGroup?: number };
  volumes?: Array<{
    name: string;
    emptyDir?: object;
    persistentVolumeClaim?: { claimName: string };
    configMap?: { name: string };
    secret?: { secretName: string };
    hostPath?: object;
  }>;
  hostNetwork?: boolean;
  hostPID?: boolean;
}
interface PodTemplate {
  metadata: { labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: PodSpec;
}
interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  data?: Record<string, string>;
  stringData?: Record<string, string>;
  spec?: {
    replicas?: number;
    serviceName?: string;
    strategy?: { type?: string };
    selector?: { matchLabels?: Record<string, string> } & Record<string, string>;
    template?: PodTemplate;
    clusterIP?: string;
    ports?: Array<{ name?: string; port: number; targetPort?: string | number }>;
    minAvailable?: number | string;
    maxUnavailable?: number | string;
    accessModes?: string[];
    volumeClaimTemplates?: Array<{ metadata: { name: string } }>;
  };
}
interface Loaded extends Manifest {
  file: string;
}

/** Every YAML file under infra/k8s, relative to it. */
function yamlFiles(dir: string, prefix = ""): string[] {
  return readdirSync(dir)
    .sort()
    .flatMap((entry) => {
      const path = join(dir, entry);
      if (statSync(path).isDirectory()) return yamlFiles(path, `${prefix}${entry}/`);
      return /\.ya?ml$/.test(entry) ? [`${prefix}${entry}`] : [];
    });
}

const files = yamlFiles(k8sDir);
const manifests: Loaded[] = files
  .filter((f) => f !== "kustomization.yaml")
  .flatMap((file) =>
    parseAllDocuments(readFileSync(join(k8sDir, file), "utf8")).flatMap((doc) => {
      assert.deepEqual(
        doc.errors.map((e) => e.message),
        [],
        `${file} does not parse as YAML`,
      );
      const value = doc.toJS() as Manifest | null;
      return value === null ? [] : [{ ...value, file }];
    }),
  );
const kustomization = parse(readFileSync(join(k8sDir, "kustomization.yaml"), "utf8")) as {
  namespace?: string;
  resources?: string[];
  images?: Array<{ name: string; newName?: string; newTag?: string }>;
};

function find(kind: string, name: string): Loaded {
  const found = manifests.find((m) => m.kind === kind && m.metadata.name === name);
  assert.ok(found, `no ${kind} ${name} in infra/k8s`);
  return found;
}
const podSpec = (m: Manifest): PodSpec => {
  assert.ok(m.spec?.template?.spec, `${m.kind} ${m.metadata.name} has no pod template`);
  return m.spec.template.spec;
};
const workloads = () =>
  manifests.filter((m) => ["Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"].includes(m.kind));

/** What `envFrom` and `env` give a container, with references resolved against the manifests. */
function containerEnv(container: Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const source of container.envFrom ?? []) {
    assert.ok(source.configMapRef, `${container.name} takes envFrom from something other than a ConfigMap`);
    const cm = find("ConfigMap", source.configMapRef.name);
    Object.assign(env, cm.data ?? {});
  }
  for (const v of container.env ?? []) {
    if (v.value !== undefined) {
      env[v.name] = v.value;
    } else if (v.valueFrom?.secretKeyRef) {
      const { name, key } = v.valueFrom.secretKeyRef;
      const secret = find("Secret", name);
      const value = secret.stringData?.[key] ?? secret.data?.[key];
      assert.ok(value, `${container.name}: ${v.name} references key ${key} that Secret ${name} does not hold`);
      env[v.name] = value;
    } else if (v.valueFrom?.configMapKeyRef) {
      const { name, key } = v.valueFrom.configMapKeyRef;
      const value = find("ConfigMap", name).data?.[key];
      assert.ok(value, `${container.name}: ${v.name} references key ${key} that ConfigMap ${name} does not hold`);
      env[v.name] = value;
    } else {
      assert.ok(v.valueFrom?.fieldRef, `${container.name}: ${v.name} has neither a value nor a known reference`);
      env[v.name] = "pod-field";
    }
  }
  return env;
}

/** The container port a probe or Service names (by name or number), or undefined. */
function declaredPort(container: Container, port: string | number | undefined) {
  return (container.ports ?? []).find((p) => p.name === port || p.containerPort === port);
}

function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) {
  return (
    selector !== undefined &&
    Object.keys(selector).length > 0 &&
    Object.entries(selector).every(([k, v]) => labels?.[k] === v)
  );
}

const schemas = {
  edge: edgeEnv,
  sync: syncEnv,
  storage: storageEnv,
  indexing: indexingEnv,
  audit: auditEnv,
  "inference-gateway": inferenceEnv,
} as const;
/** Safe to run side by side: no per-pod state a replica would miss. */
const scaledOut = ["edge", "sync", "storage", "inference-gateway"];
/**
 * One pod each: audit's query index is a per-pod SQLite file behind a shared durable consumer;
 * indexing's index rebuild does not yet cover events other replicas consume meanwhile.
 */
const singletons = ["indexing", "audit"];

describe("infra/k8s kustomization", () => {
  test("every manifest parses and names its kind, API version and name, once", () => {
    assert.ok(manifests.length >= 20, `only ${manifests.length} resources under infra/k8s`);
    const seen = new Set<string>();
    for (const m of manifests) {
      assert.ok(m.apiVersion && m.kind && m.metadata?.name, `${m.file}: a resource lacks apiVersion, kind or name`);
      const id = `${m.kind}/${m.metadata.name}`;
      assert.ok(!seen.has(id), `${id} is defined twice`);
      seen.add(id);
      // The kustomization sets the namespace; a manifest that sets another would escape it.
      assert.ok(
        m.metadata.namespace === undefined || m.metadata.namespace === "nearhub",
        `${id} sits in namespace ${String(m.metadata.namespace)}`,
      );
    }
  });

  test("kustomization.yaml lists files that exist, and every manifest file is listed", () => {
    assert.equal(kustomization.namespace, "nearhub");
    find("Namespace", "nearhub");
    const resources = kustomization.resources ?? [];
    for (const resource of resources) {
      const path = join(k8sDir, resource);
      assert.ok(existsSync(path), `kustomization.yaml lists ${resource}, which does not exist`);
      if (statSync(path).isDirectory())
        assert.ok(existsSync(join(path, "kustomization.yaml")), `${resource} has no kustomization.yaml`);
    }
    for (const file of files.filter((f) => f !== "kustomization.yaml")) {
      assert.ok(resources.includes(file), `${file} is not listed in kustomization.yaml, so it is never applied`);
    }
    const image = kustomization.images?.find((i) => i.name === "nearhub");
    assert.equal(`${image?.newName ?? "nearhub"}:${image?.newTag ?? "latest"}`, "nearhub:latest");
  });

  test("kustomize builds the same resources, all in the nearhub namespace (when kubectl is installed)", (t) => {
    const kubectl = (process.env["PATH"] ?? "")
      .split(delimiter)
      .map((dir) => join(dir, "kubectl"))
      .find((path) => existsSync(path));
    if (!kubectl) {
      t.skip("kubectl is not installed; the static checks above cover the file list");
      return;
    }
    const built = parseAllDocuments(execFileSync(kubectl, ["kustomize", k8sDir], { encoding: "utf8" }))
      .map((d) => d.toJS() as Manifest | null)
      .filter((m): m is Manifest => m !== null);
    const ids = (list: Manifest[]) => list.map((m) => `${m.kind}/${m.metadata.name}`).sort();
    assert.deepEqual(ids(built), ids(manifests));
    for (const m of built.filter((m) => m.kind !== "Namespace")) {
      assert.equal(m.metadata.namespace, "nearhub", `${m.kind}/${m.metadata.name} is outside the namespace`);
      assert.equal(m.metadata.labels?.["app.kubernetes.io/part-of"], "nearhub");
    }
  });

  for (const [name, schema] of Object.entries(schemas)) {
    describe(name, () => {
      const deployment = () => find("Deployment", name);
      const container = () => {
        const containers = podSpec(deployment()).containers;
        assert.equal(containers.length, 1, `${name} should run one container`);
        return containers[0]!;
      };

      test("its environment (shared ConfigMap + its own) passes its configuration schema", () => {
        const env = containerEnv(container());
        // Throws a ConfigError listing every problem when the manifests drift from the code.
        const config = parseEnv(name, schema, env) as {
          NATS_URL: string;
          NEARHUB_BIND_HOST: string;
          NEARHUB_DATA_DIR: string;
          NEARHUB_NATS_MONITOR_URL?: string;
        };
        for (const key of Object.keys(env)) {
          if (RUNTIME_ENV.has(key)) continue;
          assert.ok(key in schema, `${name} sets ${key}, which its configuration does not read`);
        }
        // Storage's malloc settings are the ones the code documents and `nearhub up` sets.
        if (env["GLIBC_TUNABLES"] !== undefined) assert.equal(env["GLIBC_TUNABLES"], STREAMING_MALLOC_TUNABLES);
        assert.equal(
          config.NEARHUB_BIND_HOST,
          "0.0.0.0",
          "a service bound to loopback is unreachable from its Service",
        );
        // Each address points at a Service port that exists.
        const natsUrl = new URL(config.NATS_URL);
        const nats = find("Service", natsUrl.hostname);
        assert.ok(nats.spec?.ports?.some((p) => p.port === Number(natsUrl.port)));
        assert.ok(config.NEARHUB_NATS_MONITOR_URL, `${name} does not check NATS's fsync setting`);
        const monitor = new URL(config.NEARHUB_NATS_MONITOR_URL);
        assert.ok(find("Service", monitor.hostname).spec?.ports?.some((p) => p.port === Number(monitor.port)));
        const mounts = container().volumeMounts ?? [];
        assert.ok(
          mounts.some((m) => m.mountPath === config.NEARHUB_DATA_DIR && !m.readOnly),
          `${name}'s NEARHUB_DATA_DIR (${config.NEARHUB_DATA_DIR}) is not a writable volume`,
        );
      });

      test("runs its own entry point from the one image, under tini", () => {
        const c = container();
        assert.equal(c.image, "nearhub:latest");
        // `args` is Docker's CMD: leaving `command` unset keeps the image's ENTRYPOINT (tini).
        assert.equal(c.command, undefined, `${name} overrides the image's ENTRYPOINT (tini)`);
        // node, V8 flags only (e.g. the gateway's --max-semi-space-size), then the service's entry.
        const argv = c.args ?? [];
        assert.equal(argv[0], "node");
        assert.equal(argv.at(-1), `services/${name}/dist/main.js`);
        for (const flag of argv.slice(1, -1))
          assert.match(flag, /^--[a-z-]+(=\w+)?$/, `${name}: unexpected argument ${flag}`);
        assert.ok(existsSync(`${root}services/${name}/src/main.ts`), `services/${name}/src/main.ts is missing`);
      });

      test("probes /healthz and /livez on its declared metrics (edge: HTTP) port, which Prometheus scrapes", () => {
        const c = container();
        const env = containerEnv(c);
        const opsPort = Number(name === "edge" ? env["NEARHUB_HTTP_PORT"] : env["NEARHUB_METRICS_PORT"]);
        assert.ok(opsPort > 0, `${name} has no fixed metrics port`);
        for (const [probe, path] of [
          [c.readinessProbe, "/healthz"],
          [c.livenessProbe, "/livez"],
        ] as const) {
          assert.equal(probe?.httpGet?.path, path, `${name} has no ${path} probe`);
          const port = declaredPort(c, probe.httpGet.port);
          assert.ok(
            port,
            `${name}'s ${path} probe uses port ${probe.httpGet.port}, which the container does not declare`,
          );
          assert.equal(port.containerPort, opsPort, `${name}'s ${path} probe misses the port the service serves it on`);
        }
        const grpc = declaredPort(c, "grpc");
        assert.equal(grpc?.containerPort, Number(env["NEARHUB_GRPC_PORT"]), `${name}'s grpc port is not its gRPC port`);
        const annotations = deployment().spec?.template?.metadata.annotations ?? {};
        assert.equal(annotations["prometheus.io/scrape"], "true");
        assert.equal(annotations["prometheus.io/port"], String(opsPort));
        assert.equal(annotations["prometheus.io/path"], "/metrics");
      });

      test("a Service selects its pods and names its gRPC and metrics ports", () => {
        const service = find("Service", name);
        const labels = deployment().spec?.template?.metadata.labels;
        assert.ok(selects(service.spec?.selector, labels), `Service ${name} does not select the ${name} pods`);
        assert.ok(
          selects(deployment().spec?.selector?.matchLabels, labels),
          `the ${name} Deployment does not select its own pods`,
        );
        const ports = service.spec?.ports ?? [];
        const c = container();
        for (const p of ports) {
          assert.ok(p.name, `Service ${name} has an unnamed port ${p.port}`);
          const target = declaredPort(c, p.targetPort ?? p.port);
          assert.ok(
            target,
            `Service ${name} port ${p.name} targets ${String(p.targetPort)}, which the container lacks`,
          );
          assert.equal(target.containerPort, p.port, `Service ${name} port ${p.name} moves the port`);
        }
        const names = ports.map((p) => p.name);
        assert.ok(names.includes("grpc"), `Service ${name} has no grpc port`);
        assert.ok(names.includes(name === "edge" ? "http" : "metrics"), `Service ${name} has no metrics port`);
      });

      test("runs unprivileged as uid 1000 on a read-only root filesystem, with resource bounds", () => {
        const pod = podSpec(deployment());
        const c = container();
        assert.equal(pod.securityContext?.runAsNonRoot, true);
        assert.equal(pod.securityContext?.runAsUser, 1000);
        assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
        assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
        assert.deepEqual(c.securityContext?.capabilities?.drop, ["ALL"]);
        for (const kind of ["requests", "limits"] as const) {
          assert.ok(c.resources?.[kind]?.["cpu"] && c.resources[kind]["memory"], `${name} has no ${kind}`);
        }
        for (const mount of c.volumeMounts ?? []) {
          const volume = pod.volumes?.find((v) => v.name === mount.name);
          assert.ok(volume, `${name} mounts ${mount.name}, which the pod does not define`);
          if (volume.persistentVolumeClaim) find("PersistentVolumeClaim", volume.persistentVolumeClaim.claimName);
        }
      });

      if (scaledOut.includes(name)) {
        test("runs at least two replicas, kept by a PodDisruptionBudget", () => {
          assert.ok((deployment().spec?.replicas ?? 1) >= 2, `${name} runs one replica`);
          const pdb = manifests.find(
            (m) =>
              m.kind === "PodDisruptionBudget" &&
              selects(m.spec?.selector?.matchLabels, deployment().spec?.template?.metadata.labels),
          );
          assert.ok(pdb, `no PodDisruptionBudget covers ${name}`);
          assert.ok(pdb.spec?.minAvailable !== undefined || pdb.spec?.maxUnavailable !== undefined);
          const claim = podSpec(deployment()).volumes?.find((v) => v.persistentVolumeClaim)?.persistentVolumeClaim;
          if (claim) {
            // Replicas share the volume (sync's repositories), so it must be mountable by all.
            const pvc = find("PersistentVolumeClaim", claim.claimName);
            assert.deepEqual(pvc.spec?.accessModes, ["ReadWriteMany"]);
          }
        });
      } else {
        assert.ok(singletons.includes(name));
        test("runs one replica (see the comment in its manifest)", () => {
          assert.equal(deployment().spec?.replicas, 1);
          const env = containerEnv(container());
          if (name === "audit" || env["NEARHUB_SEARCH_BACKEND"] !== "elasticsearch") {
            // A per-pod SQLite index: a rolling update would run two pods on the shared consumer.
            assert.equal(deployment().spec?.strategy?.type, "Recreate");
          }
        });
      }
    });
  }

  test("each service's environment matches docker-compose.yml, the tested reference", () => {
    // Compose's interpolation as compose.test.ts does it: fresh values for the secrets compose
    // requires, every other variable unset.
    const secrets = requiredValues();
    const compose = loadCompose(secrets);
    // The Service names equal compose's service names, so every value carries over unchanged,
    // except tracing (compose ships Jaeger, a cluster brings its own collector) and the secrets
    // each deployment makes its own (.env there, the nearhub-auth Secret here; see below).
    const composeOnly = new Set(["OTEL_EXPORTER_OTLP_ENDPOINT", ...Object.keys(secrets)]);
    for (const name of Object.keys(schemas)) {
      const k8s = containerEnv(podSpec(find("Deployment", name)).containers[0]!);
      for (const key of Object.keys(secrets)) assert.ok(k8s[key], `${name}: ${key} is missing`);
      for (const [key, value] of Object.entries(compose.services[name]?.environment ?? {})) {
        if (composeOnly.has(key) || value === null) continue;
        assert.equal(k8s[key], String(value), `${name}: ${key} differs from docker-compose.yml`);
      }
    }
  });

  test("every service takes NEARHUB_INTERNAL_KEY and NEARHUB_ADMIN_TOKEN from the nearhub-auth Secret", () => {
    const auth = find("Secret", "nearhub-auth");
    assert.equal(auth.file, "secrets.yaml");
    assert.deepEqual(Object.keys({ ...auth.data, ...auth.stringData }).sort(), ["admin-token", "internal-key"]);
    const refs: Record<string, { name: string; key: string }> = {
      NEARHUB_INTERNAL_KEY: { name: "nearhub-auth", key: "internal-key" },
      NEARHUB_ADMIN_TOKEN: { name: "nearhub-auth", key: "admin-token" },
    };
    const common = find("ConfigMap", "nearhub-common").data ?? {};
    const seen = new Map<string, Set<string>>();
    for (const [name, schema] of Object.entries(schemas)) {
      const c = podSpec(find("Deployment", name)).containers[0]!;
      for (const [variable, ref] of Object.entries(refs)) {
        const entries = (c.env ?? []).filter((v) => v.name === variable);
        assert.equal(entries.length, 1, `${name} sets ${variable} ${entries.length} times`);
        assert.equal(entries[0]!.value, undefined, `${name}: ${variable} is written in the manifest`);
        assert.deepEqual(entries[0]!.valueFrom?.secretKeyRef, ref, `${name}: ${variable} is not read from ${ref.name}`);
        assert.ok(!(variable in common), `the nearhub-common ConfigMap holds the secret ${variable}`);
      }
      // The placeholders parse: a service given them starts (ConfigError otherwise).
      const env = containerEnv(c);
      const config = parseEnv(name, schema, env) as unknown as CommonConfig;
      assert.ok(config.NEARHUB_INTERNAL_KEY && Buffer.from(config.NEARHUB_INTERNAL_KEY, "base64").length >= 32);
      assert.ok(config.NEARHUB_ADMIN_TOKEN && parseToken(config.NEARHUB_ADMIN_TOKEN), `${name}: not a token`);
      // The optional settings from the ConfigMap parse, empty meaning their defaults.
      assert.deepEqual(config.NEARHUB_ANONYMOUS_READ, []);
      assert.equal(config.NEARHUB_AUDIT_READS, "on");
      assert.equal(config.NEARHUB_OIDC_ISSUER, undefined);
      assert.equal(config.NEARHUB_OIDC_USER_CLAIM, "sub");
      for (const variable of Object.keys(refs)) {
        const values = seen.get(variable) ?? new Set<string>();
        values.add(env[variable]!);
        seen.set(variable, values);
      }
    }
    // One key and one token for the whole cluster: a service with another key could not
    // vouch for its callers to the rest.
    for (const [variable, values] of seen) {
      assert.equal(values.size, 1, `the services do not share one ${variable}`);
    }
    // Hostile values in the Secret are refused at start-up, naming the variable.
    const edge = containerEnv(podSpec(find("Deployment", "edge")).containers[0]!);
    for (const [variable, value] of [
      ["NEARHUB_INTERNAL_KEY", Buffer.alloc(16, 1).toString("base64")],
      // Huge, and no base64 in it (Node's decoder skips what is not base64, so a long string
      // of base64 letters would pass: the schema checks length after decoding, not the alphabet).
      ["NEARHUB_INTERNAL_KEY", "!".repeat(100_000)],
      ["NEARHUB_ADMIN_TOKEN", "nhp_../../etc/passwd"],
      ["NEARHUB_ADMIN_TOKEN", `${String(edge["NEARHUB_ADMIN_TOKEN"])}\n`],
    ] as const) {
      assert.throws(
        () => parseEnv("edge", edgeEnv, { ...edge, [variable]: value }),
        (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith(`${variable} `)),
        `edge accepts ${variable}=${value.slice(0, 40)}`,
      );
    }
    // The placeholders are public: secrets.yaml says how to replace them.
    const text = readFileSync(join(k8sDir, "secrets.yaml"), "utf8");
    assert.match(text, /kubectl -n nearhub create secret generic nearhub-auth/);
    assert.match(text, /--from-literal=internal-key=\$\(openssl rand -base64 32\)/);
    assert.match(text, /--from-literal=admin-token=\$\(npx nearhub token generate\)/);
  });

  test("storage uses S3 with credentials from the Secret, and the bucket Job creates its bucket", () => {
    const storage = podSpec(find("Deployment", "storage")).containers[0]!;
    const env = containerEnv(storage);
    const config = parseEnv("storage", storageEnv, env);
    assert.equal(config.NEARHUB_BLOB_BACKEND, "s3");
    // The rule across variables parseEnv cannot hold: s3 needs endpoint, bucket and both keys.
    const s3 = s3Settings(config);
    for (const key of ["NEARHUB_S3_ACCESS_KEY", "NEARHUB_S3_SECRET_KEY"]) {
      const ref = storage.env?.find((v) => v.name === key);
      assert.ok(ref?.valueFrom?.secretKeyRef, `${key} is written in the manifest instead of read from a Secret`);
    }
    const endpoint = new URL(s3.endpoint);
    const minio = find("Service", endpoint.hostname);
    assert.ok(minio.spec?.ports?.some((p) => p.port === Number(endpoint.port)));
    const job = manifests.find((m) => m.kind === "Job" && JSON.stringify(m).includes("mc mb"));
    assert.ok(job, "nothing creates the MinIO bucket");
    assert.match(JSON.stringify(job), new RegExp(`mc mb --ignore-existing \\w+/${s3.bucket}\\b`));
    const minioSet = find("StatefulSet", "minio");
    const minioEnv = containerEnv(podSpec(minioSet).containers[0]!);
    assert.equal(minioEnv["MINIO_ROOT_USER"], s3.accessKey, "storage and MinIO use different credentials");
    assert.equal(minioEnv["MINIO_ROOT_PASSWORD"], s3.secretKey, "storage and MinIO use different credentials");
  });

  test("indexing uses the Elasticsearch cluster in the manifests", () => {
    const env = containerEnv(podSpec(find("Deployment", "indexing")).containers[0]!);
    const config = parseEnv("indexing", indexingEnv, env);
    assert.equal(config.NEARHUB_SEARCH_BACKEND, "elasticsearch");
    const url = new URL(config.ELASTICSEARCH_URL ?? "");
    const service = find("Service", url.hostname);
    assert.ok(service.spec?.ports?.some((p) => p.port === Number(url.port)));
    const cluster = manifests.find(
      (m) => m.kind === "StatefulSet" && selects(service.spec?.selector, m.spec?.template?.metadata.labels),
    );
    assert.ok(cluster, `Service ${url.hostname} selects no StatefulSet`);
    assert.ok((cluster.spec?.replicas ?? 1) >= 3, "Elasticsearch runs fewer than three nodes");
    const [host = "", port = ""] = config.NEARHUB_STORAGE_ADDR.split(":");
    assert.equal(find("Service", host).spec?.ports?.find((p) => p.name === "grpc")?.port, Number(port));
  });

  test("edge's backend addresses point at the Services' ports", () => {
    const env = containerEnv(podSpec(find("Deployment", "edge")).containers[0]!);
    const targets: Array<[string, string]> = [
      ["NEARHUB_SYNC_ADDR", "grpc"],
      ["NEARHUB_STORAGE_ADDR", "grpc"],
      ["NEARHUB_INDEXING_ADDR", "grpc"],
      ["NEARHUB_AUDIT_ADDR", "grpc"],
      ["NEARHUB_INFERENCE_ADDR", "grpc"],
    ];
    for (const [key, portName] of targets) {
      const [host = "", port = ""] = (env[key] ?? "").split(":");
      const service = find("Service", host);
      assert.equal(service.spec?.ports?.find((p) => p.name === portName)?.port, Number(port), `${key} misses ${host}`);
    }
    const git = new URL(env["NEARHUB_SYNC_GIT_URL"] ?? "");
    const syncEnvVars = containerEnv(podSpec(find("Deployment", "sync")).containers[0]!);
    assert.equal(git.port, syncEnvVars["NEARHUB_GIT_HTTP_PORT"]);
    assert.ok(find("Service", git.hostname).spec?.ports?.some((p) => p.port === Number(git.port)));
  });

  test("NATS is a three-node 2.12 JetStream cluster that syncs every write", () => {
    const nats = find("StatefulSet", "nats");
    assert.equal(nats.spec?.replicas, 3);
    const pod = podSpec(nats);
    const container = pod.containers.find((c) => c.image.startsWith("nats:"));
    assert.equal(container?.image, "nats:2.12-alpine");
    // The config the container is started with comes from the nats-config ConfigMap.
    const configArg = [...(container.command ?? []), ...(container.args ?? [])].find((a) => a.endsWith(".conf"));
    assert.ok(configArg, "nats-server is not started with a config file");
    const mount = container.volumeMounts?.find((m) => configArg.startsWith(`${m.mountPath}/`));
    const volume = pod.volumes?.find((v) => v.name === mount?.name);
    assert.ok(volume?.configMap, `${configArg} is not mounted from a ConfigMap`);
    const conf = find("ConfigMap", volume.configMap.name).data?.[configArg.slice(mount!.mountPath.length + 1)];
    assert.ok(conf, `the ConfigMap has no ${configArg}`);

    // JetStream, fsync before every ack (Jepsen 2025), its store on the per-pod volume.
    const jetstream = /jetstream\s*\{([^}]*)\}/s.exec(conf)?.[1];
    assert.ok(jetstream, "JetStream is not enabled");
    assert.match(jetstream, /^\s*sync_interval:\s*always\s*$/m);
    const storeDir = /^\s*store_dir:\s*(\S+)\s*$/m.exec(jetstream)?.[1];
    const dataMount = container.volumeMounts?.find((m) => m.mountPath === storeDir);
    assert.ok(dataMount, `store_dir ${String(storeDir)} is not a mounted volume`);
    assert.ok(
      nats.spec?.volumeClaimTemplates?.some((t) => t.metadata.name === dataMount.name),
      "the JetStream store is not on a PersistentVolume",
    );

    // Cluster routes name every replica through the headless Service.
    const headless = find("Service", nats.spec?.serviceName ?? "");
    assert.equal(headless.spec?.clusterIP, "None");
    const cluster = /cluster\s*\{([\s\S]*?)\n\}/.exec(conf)?.[1] ?? "";
    const routePort = /listen:\s*\S+:(\d+)/.exec(cluster)?.[1] ?? "";
    assert.ok(routePort, "the cluster block does not listen for routes");
    for (let i = 0; i < 3; i++) {
      assert.ok(
        cluster.includes(`nats://nats-${i}.${headless.metadata.name}:${routePort}`),
        `the cluster routes miss nats-${i}`,
      );
    }
    assert.match(conf, /^server_name:\s*\$SERVER_NAME\s*$/m, "server names must differ per pod");
    const serverName = container.env?.find((e) => e.name === "SERVER_NAME");
    assert.equal(serverName?.valueFrom?.fieldRef?.fieldPath, "metadata.name");

    // Monitoring on 8222 (the services' fsync check, the probes).
    assert.ok(conf.includes("http: 0.0.0.0:8222"));
    assert.equal(declaredPort(container, "monitor")?.containerPort, 8222);
    assert.match(container.readinessProbe?.httpGet?.path ?? "", /^\/healthz/);
    assert.ok(
      manifests.some(
        (m) =>
          m.kind === "PodDisruptionBudget" &&
          selects(m.spec?.selector?.matchLabels, nats.spec?.template?.metadata.labels),
      ),
      "no PodDisruptionBudget keeps the NATS quorum",
    );
  });

  test("every pod passes the restricted Pod Security Standard the namespace enforces", () => {
    const namespace = find("Namespace", "nearhub");
    assert.equal(namespace.metadata.labels?.["pod-security.kubernetes.io/enforce"], "restricted");
    for (const w of workloads()) {
      const pod = podSpec(w);
      const id = `${w.kind}/${w.metadata.name}`;
      assert.ok(!pod.hostNetwork && !pod.hostPID, `${id} uses the host's namespaces`);
      assert.ok(!pod.volumes?.some((v) => v.hostPath), `${id} mounts a host path`);
      assert.equal(pod.securityContext?.seccompProfile?.type, "RuntimeDefault", `${id} has no seccomp profile`);
      for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
        const runAsNonRoot: boolean | undefined = c.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
        assert.equal(runAsNonRoot, true, `${id}/${c.name} may run as root`);
        assert.ok(!c.securityContext?.privileged, `${id}/${c.name} is privileged`);
        assert.equal(c.securityContext?.allowPrivilegeEscalation, false, `${id}/${c.name} may escalate privileges`);
        assert.deepEqual(c.securityContext?.capabilities?.drop, ["ALL"], `${id}/${c.name} keeps capabilities`);
        assert.ok(c.resources?.requests && c.resources.limits, `${id}/${c.name} has no resource requests and limits`);
      }
    }
  });
});
