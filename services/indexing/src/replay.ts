import { fromJsonString, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { DeliverPolicy, type JsMsg } from "@nats-io/jetstream";
import { PermanentError, type Bus, type MessageHandler, type ReceivedMessage } from "@nearhub/platform";
import type { EventDef } from "@nearhub/proto/events";
import type { Replay } from "./live-index.js";

/** The same view of a stored message the live consumer hands its handler. */
function received(m: JsMsg): ReceivedMessage {
  const header = (key: string) => (m.headers?.has(key) ? m.headers.get(key) : undefined);
  return {
    subject: m.subject,
    headers: m.headers,
    data: m.data,
    type: header("ce-type"),
    id: header("ce-id"),
    deliveryCount: 1,
    streamSequence: m.seq,
    decode<S extends DescMessage>(event: EventDef<S>): MessageShape<S> {
      try {
        return fromJsonString(event.schema, new TextDecoder().decode(m.data), { ignoreUnknownFields: true });
      } catch (error) {
        throw new PermanentError(`malformed ${event.type} body on ${m.subject}: ${(error as Error).message}`, {
          cause: error,
        });
      }
    },
  };
}

/**
 * Replays the events stream from its first message up to the last one stored when the replay
 * starts, through an ordered (ephemeral) consumer, into `handlerFor(target)`. Later events
 * reach the target through the live consumer's double write. A malformed event is skipped,
 * as the live consumer dead-letters it.
 */
export function replayFromStream(
  bus: Bus,
  stream: string,
  handlerFor: (target: Parameters<Replay>[0]) => MessageHandler,
  onSkip: (error: unknown) => void,
): Replay {
  return async (target, progress, signal) => {
    const info = await bus.jsm.streams.info(stream);
    const last = info.state.last_seq;
    if (info.state.messages === 0 || last === 0) {
      progress(0, 0);
      return;
    }
    const total = info.state.messages;
    const handler = handlerFor(target);
    // The whole stream: EVENTS holds only `events.>` (and nats-server 2.9 takes no filter list).
    const consumer = await bus.js.consumers.get(stream, { deliver_policy: DeliverPolicy.All });
    const messages = await consumer.consume({ max_messages: 256 });
    let replayed = 0;
    const abort = () => void messages.stop();
    signal.addEventListener("abort", abort, { once: true });
    try {
      for await (const m of messages) {
        try {
          await handler(received(m), signal);
        } catch (error) {
          if (!(error instanceof PermanentError)) throw error;
          onSkip(error);
        }
        replayed++;
        if (replayed % 1000 === 0) progress(replayed, total);
        // The ordered consumer never ends by itself: stop at the last message that existed.
        if (m.seq >= last || m.info.pending === 0) break;
      }
      if (signal.aborted) throw signal.reason;
      progress(replayed, total);
    } finally {
      signal.removeEventListener("abort", abort);
      await messages.close().catch(() => undefined);
    }
  };
}
