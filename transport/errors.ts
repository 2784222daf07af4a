// Operating errors of transport/: typed, each with a stable `code` that callers branch on (never the
// message text). transport/ imports nothing from src/, so it has its own small base class; src/ may wrap
// these in its ConfigError (the CLI reports `error.message` with the flag name).

export class TransportError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A `--routes` entry is not a usable route address. `code` is `EROUTE_USERINFO` or `EROUTE_ADDRESS`. */
export class RouteAddressError extends TransportError {
  /** The offending entry, with any user info redacted so a password never reaches a log. */
  readonly entry: string;
  constructor(code: 'EROUTE_USERINFO' | 'EROUTE_ADDRESS', entry: string, message: string) {
    super(code, message);
    this.entry = entry;
  }
}

/** A route frame could not be accepted. The link that produced it is closed. */
export class FrameError extends TransportError {
  constructor(code: 'EFRAME_OVERSIZE' | 'EFRAME_MALFORMED', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
