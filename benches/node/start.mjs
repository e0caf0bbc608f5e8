// Starts the Node reference server for the benchmarks.
//   node start.mjs PORT            in-memory store
//   node start.mjs PORT DATA_DIR   file-backed store (log files + LMDB)
// Prints "listening <url>" once it serves; stops on SIGTERM/SIGINT.
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.argv[2] ?? 4437)
const dataDir = process.argv[3]
const server = new DurableStreamTestServer({
  port,
  host: "127.0.0.1",
  ...(dataDir ? { dataDir } : {}),
})
await server.start()
console.log(`listening http://127.0.0.1:${port} (${dataDir ? `file-backed: ${dataDir}` : "in-memory"})`)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
