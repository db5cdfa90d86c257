#!/usr/bin/env node
// Runs the compiled build (`npm run build`, dist/) when there is one: it starts faster and uses
// about 40 MB less memory. Without it, the TypeScript sources run through tsx's loader, so a
// checkout runs with no build step.
import { existsSync } from 'node:fs'

const built = new URL('../dist/cli/main.js', import.meta.url)
if (existsSync(built)) {
  await import(built.href)
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import('../src/cli/main.ts')
}
