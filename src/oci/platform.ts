import { InvalidReferenceError, NoMatchingPlatformError } from '../errors.ts'
import type { IndexEntry, ParsedManifest } from './manifest.ts'

/** An OCI platform: what an index entry is built for. */
export interface Platform {
  os: string
  architecture: string
  variant?: string
}

const NODE_TO_OCI_ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64'
}

/** This machine's platform, in OCI terms. */
export function defaultPlatform(): Platform {
  const architecture = NODE_TO_OCI_ARCH[process.arch] ?? process.arch
  return {
    os: process.platform === 'win32' ? 'windows' : process.platform,
    architecture,
    ...(architecture === 'arm64' && { variant: 'v8' })
  }
}

/** Parses `os/arch[/variant]`, e.g. `linux/arm64/v8`. */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_]+$/.test(p))) {
    throw new InvalidReferenceError(`"${s}" is not a platform: use os/arch[/variant], e.g. linux/amd64`)
  }
  const [os = '', architecture = '', variant] = parts
  return { os, architecture, ...(variant && { variant }) }
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/')
}

/** arm64 without a variant means v8; normalise so that `linux/arm64` matches `linux/arm64/v8`. */
function normalVariant(p: { architecture: string; variant?: string }): string | undefined {
  if (p.architecture === 'arm64') return p.variant ?? 'v8'
  return p.variant
}

/**
 * Picks the index entry for `platform`: the first whose os and architecture match and whose
 * variant matches (when the wanted platform names one). Entries without a platform (attestations,
 * artifacts) are skipped. Throws `NoMatchingPlatformError` listing what the index offers.
 */
export function selectManifest(
  index: Extract<ParsedManifest, { kind: 'index' }>,
  platform: Platform
): IndexEntry {
  const candidates = index.manifests.filter(
    (m) => m.platform && m.platform.os === platform.os && m.platform.architecture === platform.architecture
  )
  const wanted = normalVariant(platform)
  const exact = candidates.find((m) => m.platform && normalVariant(m.platform) === wanted)
  const chosen = exact ?? (platform.variant ? undefined : candidates[0])
  if (chosen) return chosen
  const offered = index.manifests
    .filter((m) => m.platform && m.platform.os !== 'unknown')
    .map((m) => formatPlatform(m.platform as Platform))
  throw new NoMatchingPlatformError(
    `no manifest for ${formatPlatform(platform)} in the image index (it has: ${offered.join(', ') || 'none'})`
  )
}
