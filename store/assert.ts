// Broken invariants stop the process: they are programming errors, never operating conditions
// (CONVENTIONS.md §3). Stays on in production.
export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new AssertionError(`store invariant broken: ${message}`);
}
