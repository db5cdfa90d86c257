import bytes from 'bytes'

/** `94.3 MiB` style sizes for people. */
export function formatBytes(n: number): string {
  return (bytes.format(n, { unitSeparator: ' ', decimalPlaces: 1 }) ?? `${n} B`).replace(/([KMGT])B$/, '$1iB')
}

/** `sha256:0123456789ab` — enough of a digest to tell blobs apart. */
export function shortDigest(d: string): string {
  return d.replace(/^sha256:/, '').slice(0, 12)
}
