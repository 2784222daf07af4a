// Compact, stable text forms of messages, entries and Ready batches: used by scripted scenario tests
// (their expected transcripts live beside them) and handy in logs when debugging a cluster.
import type { Message } from './messages.js';
import { MessageType } from './messages.js';
import type { Ready } from './raw_node.js';
import type { Entry } from './types.js';
import { EntryType } from './types.js';

function hex(b: Uint8Array, max = 8): string {
  let s = '';
  for (let i = 0; i < Math.min(b.length, max); i++) s += b[i]!.toString(16).padStart(2, '0');
  return b.length > max ? `${s}…(${b.length})` : s;
}

export function describeEntry(e: Entry): string {
  const kind = e.type === EntryType.confChange ? 'conf' : e.data.length === 0 ? 'noop' : `"${ascii(e.data)}"`;
  return `${e.term}/${e.index} ${kind}`;
}

function ascii(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < Math.min(b.length, 24); i++) {
    const c = b[i]!;
    s += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '.';
  }
  return b.length > 24 ? `${s}…` : s;
}

export function describeMessage(m: Message): string {
  let s = `${m.from}->${m.to} ${m.type} term=${m.term}`;
  switch (m.type) {
    case MessageType.app:
      s += ` prev=${m.logTerm}/${m.index} commit=${m.commit}`;
      if (m.entries.length > 0) s += ` [${m.entries.map(describeEntry).join(', ')}]`;
      break;
    case MessageType.appResp:
      s += m.reject ? ` reject index=${m.index} hint=${m.logTerm}/${m.rejectHint}` : ` index=${m.index}`;
      break;
    case MessageType.vote:
    case MessageType.preVote:
      s += ` last=${m.logTerm}/${m.index}${m.context.length > 0 ? ' transfer' : ''}`;
      break;
    case MessageType.voteResp:
    case MessageType.preVoteResp:
      s += m.reject ? ' reject' : ' grant';
      break;
    case MessageType.heartbeat:
      s += ` commit=${m.commit}${m.context.length > 0 ? ` ctx=${hex(m.context)}` : ''}`;
      break;
    case MessageType.heartbeatResp:
      if (m.context.length > 0) s += ` ctx=${hex(m.context)}`;
      break;
    case MessageType.snap: {
      const c = m.snapshot!;
      s += ` snap=${c.meta.term}/${c.meta.index} offset=${c.offset} bytes=${c.data.length}${c.done ? ' done' : ''}`;
      break;
    }
    case MessageType.snapResp:
      s += ` snap@${m.index} next=${m.rejectHint}${m.reject ? ' reject' : ''}`;
      break;
    case MessageType.readIndex:
    case MessageType.readIndexResp:
      s += ` index=${m.index} ctx=${hex(m.context)}`;
      break;
    case MessageType.transferLeader:
      s += ` to=${m.index}`;
      break;
    case MessageType.prop:
      s += ` [${m.entries.map((e) => ascii(e.data)).join(', ')}]`;
      break;
  }
  if (m.recovering) s += ' recovering';
  return s;
}

export function describeReady(rd: Ready): string[] {
  const out: string[] = [];
  if (rd.softState) out.push(`soft: lead=${rd.softState.lead} state=${rd.softState.state}`);
  if (rd.hardState) out.push(`hard: term=${rd.hardState.term} vote=${rd.hardState.vote} commit=${rd.hardState.commit}`);
  if (rd.snapshot) out.push(`snapshot: ${rd.snapshot.meta.term}/${rd.snapshot.meta.index} voters=${rd.snapshot.meta.conf.voters} learners=${rd.snapshot.meta.conf.learners}`);
  if (rd.entries.length > 0) out.push(`entries: ${rd.entries.map(describeEntry).join(', ')}`);
  if (rd.committedEntries.length > 0) out.push(`committed: ${rd.committedEntries.map(describeEntry).join(', ')}`);
  for (const rs of rd.readStates) out.push(`read: index=${rs.index} ctx=${hex(rs.context)}`);
  for (const m of rd.messages) out.push(`send: ${describeMessage(m)}`);
  return out;
}
