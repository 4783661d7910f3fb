import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseLog, parseSummary } from "./h2load.js";

describe("h2load output", () => {
  test("the summary gives succeeded, failed (failed + errored + timeout) and DATA bytes", () => {
    const text = [
      "finished in 4.00s, 1000.00 req/s, 106.58KB/s",
      "requests: 3000 total, 3010 started, 3000 done, 2990 succeeded, 4 failed, 5 errored, 1 timeout",
      "status codes: 2990 2xx, 0 3xx, 0 4xx, 0 5xx",
      "traffic: 319.75KB (327420) total, 19.67KB (20137) headers (space savings 96.37%), 292.31KB (299325) data",
    ].join("\n");
    assert.deepEqual(parseSummary(text), { succeeded: 2990, failed: 10, dataBytes: 299325 });
  });

  test("a summary it cannot read is an error that shows the output", () => {
    assert.throws(
      () => parseSummary("h2load: connection refused"),
      /cannot read h2load's summary:\nh2load: connection refused/,
    );
  });

  test("the log gives sorted latencies in ms and counts statuses other than 2xx", () => {
    const log = [
      "1764280000000000\t200\t2500",
      "1764280000001000\t503\t900",
      "",
      "1764280000002000\t200\t1200",
      "bad line",
    ];
    const { latenciesMs, non2xx } = parseLog(log.join("\n"));
    assert.deepEqual(Array.from(latenciesMs), [0.9, 1.2, 2.5]);
    assert.equal(non2xx, 1);
  });
});
