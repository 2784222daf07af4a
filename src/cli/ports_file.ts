// `--ports-file FILE`: once every listener is bound, the node writes the ports it got, so a supervisor or a test
// that passed port 0 learns them without probing for a free port first (nats-server's `--ports_file_dir`;
// CONVENTIONS.md §16: a probed-and-released port is taken by someone else often enough to fail CI).
// Written atomically (a temp file renamed over FILE): a reader polling for FILE never sees half of it.
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { MembershipdError } from '../errors.js';

/** What the file holds: one JSON object, the bound ports (null for a listener this node does not run). */
export interface BoundPorts {
  readonly pid: number;
  readonly nats: number;
  readonly http: number;
  readonly ws: number | null;
  readonly cluster: number | null;
}

/** The ports file could not be written: the node stops, since whoever asked for it would wait for it forever. */
export class PortsFileError extends MembershipdError {
  constructor(path: string, cause: unknown) {
    super('EPORTS_FILE', `cannot write --ports-file ${JSON.stringify(path)}: ${cause instanceof Error ? cause.message : String(cause)}; `
      + 'check that its directory exists and is writable, or leave --ports-file out', { cause });
  }
}

export function writePortsFile(path: string, ports: BoundPorts): void {
  const temporary = `${path}.${ports.pid}.tmp`;
  try {
    writeFileSync(temporary, `${JSON.stringify(ports)}\n`, { mode: 0o644 });
    renameSync(temporary, path);
  } catch (err) {
    rmSync(temporary, { force: true });
    throw new PortsFileError(path, err);
  }
}

/** At stop, as nats-server does: a file left behind would name ports nobody listens on any more. */
export function removePortsFile(path: string): void {
  rmSync(path, { force: true });
}
