// Compares a vitest JSON report with expected-failures.txt, both ways:
// an unexpected failure fails the run, and so does a listed test that now
// passes (the list must only shrink). Prints the counts for the record.
import fs from "node:fs"

const [reportPath] = process.argv.slice(2)
const report = JSON.parse(fs.readFileSync(reportPath, "utf8"))
const expected = new Set(
  fs
    .readFileSync(new URL("./expected-failures.txt", import.meta.url), "utf8")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith("#")),
)

const status = new Map()
for (const file of report.testResults) {
  for (const test of file.assertionResults) status.set(test.fullName, test.status)
}
const count = (s) => [...status.values()].filter((v) => v === s).length
const unexpected = [...status].filter(([name, s]) => s === "failed" && !expected.has(name))
const fixed = [...expected].filter((name) => status.get(name) === "passed")
const unknown = [...expected].filter((name) => !status.has(name))

console.log(
  `conformance: ${status.size} tests, ${count("passed")} passed, ${count("failed")} failed ` +
    `(${expected.size} expected), ${status.size - count("passed") - count("failed")} skipped`,
)
for (const [name] of unexpected) console.log(`UNEXPECTED FAILURE: ${name}`)
for (const name of fixed) console.log(`NOW PASSING (remove from expected-failures.txt): ${name}`)
for (const name of unknown) console.log(`NO SUCH TEST (remove from expected-failures.txt): ${name}`)
if (unexpected.length || fixed.length || unknown.length) process.exit(1)
