// Random rows for the captured table, and the two sides of the comparison:
// the table as JSON (to_jsonb of each row) and a StreamDB collection's rows.

/** A seeded PRNG (mulberry32): the same seed gives the same mix of writes. */
export function makeRandom(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const pick = (random, xs) => xs[Math.floor(random() * xs.length)]
const WORDS = ["alpha", "Grüße", "日本語", 'quote"d', "back\\slash", "tab\there", "new\nline", "emoji 🚀", "", "'single'"]

function randomJson(random, depth = 0) {
  const r = random()
  if (depth > 2 || r < 0.3) {
    return pick(random, [null, true, false, 0, -1, 3.25, 1e21, 123456789012, "", "text", "ünïcödé", "a\u0001b"])
  }
  if (r < 0.6) return Array.from({ length: Math.floor(random() * 4) }, () => randomJson(random, depth + 1))
  const obj = {}
  for (let i = Math.floor(random() * 4); i > 0; i--) obj[pick(random, WORDS)] = randomJson(random, depth + 1)
  return obj
}

/** Column values as query parameters (doc as JSON text: pg would turn a JS array into a SQL array). */
export function randomRow(random) {
  const micros = Math.floor(random() * 1e6)
  const at = new Date(Date.UTC(1990 + Math.floor(random() * 60), Math.floor(random() * 12), 1 + Math.floor(random() * 28),
    Math.floor(random() * 24), Math.floor(random() * 60), Math.floor(random() * 60)))
  const cents = Math.floor(random() * 2e12) - 1e12
  return {
    name: Array.from({ length: 1 + Math.floor(random() * 3) }, () => pick(random, WORDS)).join(" "),
    doc: JSON.stringify(randomJson(random)),
    at: `${at.toISOString().slice(0, 19)}.${String(micros).padStart(6, "0")}+00:00`,
    blob: Buffer.from(Array.from({ length: Math.floor(random() * 40) }, () => Math.floor(random() * 256))),
    amount: (cents / 1000).toFixed(3),
    note: random() < 0.5 ? null : pick(random, WORDS),
  }
}

/** How the capture keys a row of the test tables: the id as text, or a JSON array of a composite key. */
export const idKey = (row) => String(row.id)

/** Rows in the order of their keys, so two sides compare as lists. */
const sortedByKey = (rows, keyOf) => rows.sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0))

/** The table as JSON (to_jsonb of each row), in key order: what a captured client must hold. */
export async function expectedRows(session, table, keyOf = idKey) {
  const res = await session.query(`SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') AS rows FROM ${table} t`)
  return sortedByKey(res.rows[0].rows, keyOf)
}

/**
 * A StreamDB collection's rows in key order, without the fields the client
 * adds to every row: `_seq` (its insertion counter), the key field (the
 * message's key, which must be the row's key) and TanStack DB's virtual ones.
 */
export function materialisedRows(collection, keyField, keyOf = idKey) {
  const rows = [...collection.values()].map((row) => {
    const { _seq, [keyField]: key, ...rest } = row
    for (const virtual of TANSTACK_VIRTUAL_FIELDS) delete rest[virtual]
    if (key !== keyOf(rest)) throw new Error(`row keyed ${JSON.stringify(key)} is ${JSON.stringify(rest)}`)
    return rest
  })
  return sortedByKey(rows, keyOf)
}

// What TanStack DB adds to each row it hands out (sync state, origin, key, collection).
const TANSTACK_VIRTUAL_FIELDS = ["$synced", "$origin", "$key", "$collectionId", "$hasPendingWrites"]

/** A MaterializedState type map (key -> value) as rows in key order; each key must be the row's key. */
export function stateRows(byKey, keyOf = idKey) {
  const rows = [...byKey.entries()].map(([key, row]) => {
    if (key !== keyOf(row)) throw new Error(`row keyed ${JSON.stringify(key)} is ${JSON.stringify(row)}`)
    return row
  })
  return sortedByKey(rows, keyOf)
}
