// Starts the Node reference server for the benchmarks.
//   node start.mjs PORT                       in-memory store
//   node start.mjs PORT DATA_DIR              file-backed store (log files + LMDB)
//   node start.mjs PORT [DATA_DIR] --webhooks with webhook subscriptions on
// Prints "listening <url>" once it serves; stops on SIGTERM/SIGINT.
import { DurableStreamTestServer } from "@durable-streams/server"

const args = process.argv.slice(2)
const webhooks = args.includes("--webhooks")
const [portArg, dataDir] = args.filter((a) => a !== "--webhooks")
const port = Number(portArg ?? 4437)
const server = new DurableStreamTestServer({
  port,
  host: "127.0.0.1",
  ...(dataDir ? { dataDir } : {}),
  ...(webhooks ? { webhooks: true } : {}),
})
await server.start()
console.log(
  `listening http://127.0.0.1:${port} (${dataDir ? `file-backed: ${dataDir}` : "in-memory"}${webhooks ? ", webhooks" : ""})`,
)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
