// The data directory's format marker. A directory written by a newer format is refused before any
// file in it is read, so an older binary never misreads (or "repairs") data it does not understand.
import { join } from 'node:path';
import { FormatVersionError, StoreError, StoreErrorCode } from './errors.js';
import { type StoreFs, writeFileDurable } from './fs.js';

export const FORMAT_VERSION = 1;
export const FORMAT_FILE = 'FORMAT';

/** Creates the directory and its marker, or checks the marker of an existing one. */
export async function ensureFormat(fs: StoreFs, dir: string): Promise<void> {
  await fs.mkdir(dir);
  const path = join(dir, FORMAT_FILE);
  if (!(await fs.exists(path))) {
    const names = (await fs.readdir(dir)).filter((n) => n !== FORMAT_FILE && n !== 'LOCK' && !n.endsWith('.tmp'));
    if (names.length > 0) {
      throw new StoreError(
        StoreErrorCode.formatVersion,
        `data directory ${dir} holds ${names.join(', ')} but no ${FORMAT_FILE} marker: it was not written by membershipd ` +
          'or the marker was removed; point --data-dir at an empty directory or restore the marker',
      );
    }
    await writeFileDurable(fs, path, Buffer.from(`${JSON.stringify({ format: FORMAT_VERSION, product: 'membershipd' })}\n`));
    return;
  }
  const text = (await fs.readFile(path)).toString('utf8');
  let found: unknown;
  try {
    found = (JSON.parse(text) as { format?: unknown }).format;
  } catch {
    found = undefined;
  }
  if (typeof found !== 'number' || !Number.isInteger(found) || found < 1) {
    throw new StoreError(
      StoreErrorCode.formatVersion,
      `${path} is not a valid format marker (${JSON.stringify(text.slice(0, 80))}): restore it or use another --data-dir`,
    );
  }
  if (found > FORMAT_VERSION) throw new FormatVersionError(dir, found, FORMAT_VERSION);
}
