import { toJson } from "@bufbuild/protobuf";
import {
  Code,
  NearhubError,
  ServingStatus,
  formatZodIssues,
  sendJson,
  sendMetrics,
  type ServiceMetrics,
} from "@nearhub/platform";
import { HealthCheckResponse_ServingStatus } from "@nearhub/proto/health";
import { MirrorSchema } from "@nearhub/proto/sync";
import { z } from "zod";
import type { Backends } from "./backends.js";
import { readJson, type Route } from "./router.js";

const addMirrorBody = z.object({
  name: z.string().min(1).max(300),
  interval_seconds: z.number().int().min(0).max(4_294_967_295).optional(),
  refs: z.string().max(100).optional(),
  lfs: z.boolean().optional(),
});

/** Edge's own routes: health, metrics and mirror administration (search is in search-routes.ts). */
export function edgeRoutes(backends: Backends, metrics: ServiceMetrics, selfReady: () => boolean): Route[] {
  return [
    {
      method: "GET",
      pattern: /^\/healthz$/,
      template: "/healthz",
      handler: async ({ res }) => {
        const entries = await Promise.all(
          Object.entries(backends.health).map(async ([name, client]) => {
            try {
              const { status } = await client.check({ service: "" }, { timeoutMs: 1000 });
              return [name, HealthCheckResponse_ServingStatus[status]] as const;
            } catch (error) {
              return [name, `UNREACHABLE: ${NearhubError.from(error).rawMessage}`] as const;
            }
          }),
        );
        const services: Record<string, string> = {
          edge: selfReady() ? "SERVING" : "NOT_SERVING",
          ...Object.fromEntries(entries),
        };
        const ok = Object.values(services).every((s) => s === ServingStatus[ServingStatus.SERVING]);
        sendJson(res, ok ? 200 : 503, { status: ok ? "SERVING" : "NOT_SERVING", services });
      },
    },
    {
      method: "GET",
      pattern: /^\/livez$/,
      template: "/livez",
      handler: ({ res }) => sendJson(res, 200, { status: "alive" }),
    },
    {
      method: "GET",
      pattern: /^\/metrics$/,
      template: "/metrics",
      handler: ({ res }) => sendMetrics(res, metrics),
    },
    {
      method: "GET",
      pattern: /^\/api\/mirrors$/,
      template: "/api/mirrors",
      handler: async ({ res, url }) => {
        const { mirrors } = await backends.sync.listMirrors({ prefix: url.searchParams.get("prefix") ?? "" });
        sendJson(res, 200, { mirrors: mirrors.map((m) => toJson(MirrorSchema, m)) });
      },
    },
    {
      method: "POST",
      pattern: /^\/api\/mirrors$/,
      template: "/api/mirrors",
      handler: async ({ req, res }) => {
        const parsed = addMirrorBody.safeParse(await readJson(req));
        if (!parsed.success) throw new NearhubError(Code.InvalidArgument, formatZodIssues(parsed.error));
        const body = parsed.data;
        const { mirror, created } = await backends.sync.addMirror({
          name: body.name,
          intervalSeconds: body.interval_seconds ?? 0,
          refs: body.refs ?? "",
          lfs: body.lfs ?? false,
        });
        sendJson(res, created ? 201 : 200, { mirror: mirror ? toJson(MirrorSchema, mirror) : null, created });
      },
    },
    {
      method: "GET",
      pattern: /^\/api\/mirrors\/(?<name>.+)$/,
      template: "/api/mirrors/{name}",
      handler: async ({ res, params }) => {
        const { mirror } = await backends.sync.getMirror({ name: params["name"] ?? "" });
        sendJson(res, 200, { mirror: mirror ? toJson(MirrorSchema, mirror) : null });
      },
    },
    {
      method: "DELETE",
      pattern: /^\/api\/mirrors\/(?<name>.+)$/,
      template: "/api/mirrors/{name}",
      handler: async ({ res, params }) => {
        const { removed } = await backends.sync.removeMirror({ name: params["name"] ?? "" });
        if (!removed) throw new NearhubError(Code.NotFound, `no mirror named ${(params["name"] ?? "").slice(0, 200)}`);
        sendJson(res, 200, { removed });
      },
    },
  ];
}
