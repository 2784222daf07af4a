// Operating errors of src/: each has a stable `code` that callers branch on (never the message text),
// and a message that says what was wrong and what to do. Broken invariants use assert() instead.

export class MembershipdError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A flag, config file or environment value is wrong; the CLI exits 2 with the message. */
export class ConfigError extends MembershipdError {
  readonly flag: string | undefined;
  constructor(message: string, flag?: string, options?: { cause?: unknown }) {
    super('ECONFIG', message, options);
    this.flag = flag;
  }
}
