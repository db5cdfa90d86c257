/**
 * Builds the test images into their cache (a no-op when it is complete) and prints where.
 * `npm run test:vm` runs it on the host before booting the UML guest: the guest sees the
 * host's root read-only, so it reads the cache the host built, where building it inside would
 * cost ten times longer and the guest's memory. The cache must be on the host's root, not
 * under /dev, /proc, /sys or /run, which the guest mounts afresh; `SHOAL_TEST_IMAGES` (default
 * /tmp/shoal-test-images) reaches the guest through scripts/vm/run-in-uml.sh.
 */
import { buildTestImages } from './images.ts'

const { dir } = await buildTestImages()
console.log(`test images in ${dir}`)
