// The official TypeScript client (@durable-streams/client) against a running
// ds-sidecar: create, idempotent append, catch-up read, and live tailing over
// long-poll and SSE. Run with vitest.client.config.mjs (see README.md).
// With DS_TOKEN set (a sidecar with --auth jwt) the client sends it as
// `Authorization: Bearer`, through its own `headers` option.
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client"
import { describe, expect, test } from "vitest"

const baseUrl = process.env.DS_BASE_URL ?? "http://127.0.0.1:4437"
const headers = process.env.DS_TOKEN ? { Authorization: `Bearer ${process.env.DS_TOKEN}` } : {}
const url = (name) => `${baseUrl}/v1/stream/client/${name}-${Date.now()}-${Math.random().toString(36).slice(2)}`

/** Collects live JSON items until `count` arrived (or the timeout fails the test). */
async function tail(streamUrl, live, offset, count) {
  const controller = new AbortController()
  const res = await stream({ url: streamUrl, offset, live, signal: controller.signal, headers })
  return await new Promise((resolve) => {
    const items = []
    res.subscribeJson(async (batch) => {
      items.push(...batch.items)
      if (items.length >= count) {
        controller.abort()
        resolve(items)
      }
    })
  })
}

describe("official TypeScript client", () => {
  test("creates, appends idempotently and reads back", async () => {
    const handle = await DurableStream.create({ url: url("rw"), contentType: "application/json", headers })
    const producer = new IdempotentProducer(handle, "client-test", { autoClaim: true })
    for (let i = 0; i < 5; i++) producer.append(JSON.stringify({ i }))
    await producer.flush()
    await producer.close()
    const res = await stream({ url: handle.url, live: false, headers })
    expect(await res.json()).toEqual([0, 1, 2, 3, 4].map((i) => ({ i })))
    const head = await handle.head()
    expect(head.exists).toBe(true)
    expect(head.offset).toBe(res.offset)
  })

  for (const live of ["long-poll", "sse"]) {
    test(`tails live appends over ${live}`, async () => {
      const handle = await DurableStream.create({ url: url(live), contentType: "application/json", headers })
      await handle.append(JSON.stringify({ before: true }))
      const received = tail(handle.url, live, "-1", 3)
      await new Promise((r) => setTimeout(r, 300))
      await handle.append(JSON.stringify({ n: 1 }))
      await handle.append(JSON.stringify({ n: 2 }))
      expect(await received).toEqual([{ before: true }, { n: 1 }, { n: 2 }])
    })
  }
})
