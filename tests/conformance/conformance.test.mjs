// The official Durable Streams server conformance suite, run against a
// ds-sidecar that is already listening (see README.md beside this file).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

runConformanceTests({
  baseUrl: process.env.DS_BASE_URL ?? "http://127.0.0.1:4437",
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_TIMEOUT_MS ?? 30000),
})
