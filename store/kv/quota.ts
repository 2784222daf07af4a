// The KV storage quota (--max-kv-bytes, issue 20 item 4), etcd's --quota-backend-bytes for our KV: a write that would
// take the node's KV data past the quota is refused before it is proposed; deletes and purges always pass, so an
// operator can free space on a full node. Checked by the node that receives the write, against its applied state:
// the state machine never sees the quota, so nodes with different flags cannot apply an entry differently. Writes in
// flight at the moment the quota is reached can overshoot it by what they carry (bounded by the node's waiting
// writes); the next one is refused.
import type { KvCommand, KvWriteCommand } from './command.js';
import { KvErrorCode, storedBytes, type KvResult } from './state_machine.js';

/** Control-plane buckets (users, roles, nodes …) are never refused: administering a full node must stay possible. */
export const quotaExemptPrefix = 'ub_';

/** Bytes `w` would add, as storedBytes counts them (0 for deletes and purges: they only free space). */
function addedBytes(w: KvWriteCommand): number {
  if (!('value' in w) || w.bucket.startsWith(quotaExemptPrefix)) return 0;
  // A PUT's stored bytes count in full, even when it replaces a value: a quota is a ceiling to stay under, and
  // counting the replaced bytes back would need the state of the key at apply time.
  return storedBytes(w.bucket, w.key, w.hdrBytes ?? 0, w.value.length);
}

/** Bytes `cmd` would add to the KV data that the quota counts. */
export function quotaBytesOf(cmd: KvCommand): number {
  switch (cmd.op) {
    case 'put':
    case 'create':
    case 'update':
    case 'delete':
    case 'purge':
      return addedBytes(cmd);
    case 'txn': {
      let n = 0;
      for (const w of cmd.ops) n += addedBytes(w);
      return n;
    }
    default:
      return 0;
  }
}

/** The refusal of `cmd` when `usedBytes` plus what it adds passes `maxBytes`; undefined when it may go ahead. */
export function quotaRefusal(cmd: KvCommand, usedBytes: number, maxBytes: number): (KvResult & { ok: false }) | undefined {
  const adds = quotaBytesOf(cmd);
  if (adds === 0 || usedBytes + adds <= maxBytes) return undefined;
  return {
    ok: false,
    code: KvErrorCode.quotaExceeded,
    message: `KV storage quota reached: this write of ${adds} bytes would take the KV data to ${usedBytes + adds} bytes, `
      + `past --max-kv-bytes ${maxBytes}; delete or purge keys (or buckets), or restart the nodes with a larger --max-kv-bytes`,
  };
}
