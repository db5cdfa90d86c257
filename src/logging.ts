import { type DestinationStream, type Logger, pino } from 'pino'

/** Paths redacted from every log line: credentials never reach a log. */
export const REDACT_PATHS = [
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  '*.authorization',
  'password',
  '*.password',
  'token',
  '*.token',
  'registries.*.password',
  'registries.*.token'
]

export interface LoggerInit {
  level?: string
  /** Where lines go (stderr by default, so stdout stays free for command output). */
  destination?: DestinationStream
}

/** The root logger; components take `logger.child({ component })`. */
export function createLogger(init: LoggerInit = {}): Logger {
  return pino(
    {
      level: init.level ?? 'info',
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' }
    },
    init.destination ?? pino.destination(2)
  )
}
