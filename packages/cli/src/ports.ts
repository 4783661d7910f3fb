import { createServer, connect } from "node:net";

/** True when something accepts TCP connections on host:port within `timeoutMs`. */
export function isListening(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (result: boolean) => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** `preferred` when it is free on host, otherwise a free port the OS picks. */
export async function freePort(host: string, preferred: number): Promise<number> {
  const tryPort = (port: number) =>
    new Promise<number | undefined>((resolve) => {
      const server = createServer();
      server.once("error", () => resolve(undefined));
      server.listen(port, host, () => {
        const address = server.address();
        const bound = typeof address === "object" && address ? address.port : undefined;
        server.close(() => resolve(bound));
      });
    });
  if (preferred > 0) {
    const got = await tryPort(preferred);
    if (got !== undefined) return got;
  }
  const any = await tryPort(0);
  if (any === undefined) throw new Error(`no free TCP port on ${host}`);
  return any;
}
