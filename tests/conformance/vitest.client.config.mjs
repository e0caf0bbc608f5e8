import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["client.test.mjs"],
    testTimeout: 20000,
  },
})
