// The official Durable Streams server conformance suite, run against a
// ds-sidecar that is already listening (see README.md beside this file).
//
// `runConformanceTests` takes no headers or fetch option. With DS_TOKEN set
// (a sidecar with --auth jwt), every request the suite makes gets
// `Authorization: Bearer $DS_TOKEN` by wrapping the global fetch before the
// suite (and the client it uses) is loaded; requests that set their own
// Authorization keep it.
const token = process.env.DS_TOKEN
if (token) {
  const plainFetch = globalThis.fetch
  globalThis.fetch = (input, init = {}) => {
    const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined))
    if (!headers.has("authorization")) headers.set("authorization", `Bearer ${token}`)
    return plainFetch(input, { ...init, headers })
  }
}

const { runConformanceTests } = await import("@durable-streams/server-conformance-tests")

runConformanceTests({
  baseUrl: process.env.DS_BASE_URL ?? "http://127.0.0.1:4437",
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_TIMEOUT_MS ?? 30000),
  subscriptions: true,
})
