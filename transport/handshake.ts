// The route handshake, run inside mutually-verified TLS before any other frame:
//   both sides:  HELLO  {version, cluster, name, identity key, nonce, cluster size N (0: joining), posture, user}
//   both sides:  AUTH   {signature over the peer's nonce, password proof}   (after reading the peer's HELLO)
// Either side refuses with a REFUSE {code, reason} frame before closing, so both logs carry the reason.
//
// Both proofs are bound to this TLS session through an RFC 5705 keying-material export, so a signature or
// proof cannot be relayed to another connection. The password never crosses the wire: each side sends an
// HMAC of the session binding and the peer's nonce keyed by the route password, and the receiver compares
// it with its own computation in constant time (timingSafeEqual on two 32-byte digests).
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { HelloBody } from './frame.js';
import { verifyEd25519, type RouteIdentity } from './identity.js';

// 2: KV revisions are per-bucket sequences. A node of version 1 applies the same log entries with other CAS
// semantics, so the two must not share a Raft group (a rolling upgrade is refused; see deploy/cluster/RUNBOOK.md).
// 3: a snapshot travels as its file in snap_chunk/snap_ack frames, and Raft's snapshot message carries only a
// reference to it (src/node/snapshot_stream.ts). A node of version 2 would install the reference as an image.
export const routeProtocolVersion = 3;
export const channelBindingLabel = 'EXPORTER-membershipd-route-v1';
export const channelBindingBytes = 32;

/** Stable refusal codes: a peer and an operator branch on these, never on the reason text. */
export const refusalCode = {
  version: 'version',
  clusterName: 'cluster_name',
  clusterSize: 'cluster_size',
  incarnation: 'cluster_incarnation',
  posture: 'posture',
  user: 'auth_user',
  password: 'auth_password',
  proof: 'identity_proof',
  identity: 'identity',
  protocol: 'protocol',
  frameOversize: 'frame_oversize',
  frameMalformed: 'frame_malformed',
  handshakeTimeout: 'handshake_timeout',
  tls: 'tls',
  deadPeer: 'dead_peer',
  slowConsumer: 'slow_consumer',
  duplicate: 'duplicate',
  self: 'self',
  shutdown: 'shutdown',
  connect: 'connect',
  closed: 'closed',
} as const;
export type RefusalCode = (typeof refusalCode)[keyof typeof refusalCode];

export interface Refusal {
  readonly code: RefusalCode;
  readonly reason: string;
}

export interface HandshakeConfig {
  readonly clusterName: string;
  readonly serverName: string;
  readonly identity: RouteIdentity;
  readonly clusterSize: number;
  readonly posture: Uint8Array;
  readonly user: string;
  readonly password: string;
  /** The cluster incarnation of this node's data ('' or absent: never recovered; see HelloBody.incarnation). */
  readonly incarnation?: string;
}

const proofContext = Buffer.from('membershipd route identity proof v1\0');
const passwordContext = Buffer.from('membershipd route password proof v1\0');

export function createHello(config: HandshakeConfig, nonce: Uint8Array): HelloBody {
  return {
    version: routeProtocolVersion, cluster: config.clusterName, name: config.serverName,
    identity: config.identity.publicKey, nonce, clusterSize: config.clusterSize, posture: config.posture,
    user: config.user, ...(config.incarnation ? { incarnation: config.incarnation } : {}),
  };
}

function short(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex').slice(0, 16);
}

/** A posture digest as an operator can compare it: printable text as is, anything else as hex. */
function shownDigest(bytes: Uint8Array): string {
  const text = Buffer.from(bytes).toString('latin1');
  return /^[\x20-\x7e]{1,64}$/.test(text) ? text : Buffer.from(bytes).toString('hex').slice(0, 32);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Checks the peer's HELLO against this node's configuration. */
export function checkHello(config: HandshakeConfig, peer: HelloBody): Refusal | undefined {
  if (peer.version !== routeProtocolVersion) {
    return { code: 'version', reason: `route protocol version ${peer.version} from "${peer.name}", this node speaks ${routeProtocolVersion}` };
  }
  if (peer.cluster !== config.clusterName) {
    return { code: 'cluster_name', reason: `cluster name mismatch: peer "${peer.name}" is in "${peer.cluster}", this node in "${config.clusterName}"` };
  }
  // A cluster recovered from a lost quorum (`cluster recover --force-new-cluster`) is a new incarnation: the nodes of
  // the old one hold logs the new one never saw, and letting them in would let their entries or votes overwrite it.
  // Checked before N (which usually differs too) so the refused node is told the remedy. A node joining (N 0) has no
  // data yet: it adopts the incarnation of the cluster it joins.
  const theirs = peer.incarnation ?? '';
  const ours = config.incarnation ?? '';
  if (theirs !== ours && peer.clusterSize !== 0 && config.clusterSize !== 0) {
    return { code: 'cluster_incarnation', reason: incarnationMismatch(peer.name, theirs, ours) };
  }
  // N is the slot count every node derived from --routes when the cluster formed: two nodes that disagree would
  // number the Raft ids differently, so they never talk. It stays fixed while `cluster add` appends slots (the
  // node layer compares the replicated slot tables in its own hello). 0 is a node joining a running cluster
  // (--initial-cluster-state existing): it derives nothing from --routes and learns its slot from the table its
  // peers replicate, so no numbering of its own can disagree; it is accepted by, and accepts, any N.
  if (peer.clusterSize !== config.clusterSize && peer.clusterSize !== 0 && config.clusterSize !== 0) {
    return { code: 'cluster_size', reason: `cluster size mismatch: peer "${peer.name}" expects ${peer.clusterSize} nodes, this node ${config.clusterSize} (check --routes on both; a node added to a running cluster starts with --initial-cluster-state existing)` };
  }
  if (!Buffer.from(peer.posture).equals(Buffer.from(config.posture))) {
    return { code: 'posture', reason: `security posture mismatch with "${peer.name}": digest ${shownDigest(peer.posture)} vs ${shownDigest(config.posture)} (bus-auth mode, client TLS, store kind must match)` };
  }
  // Constant time, so a probe cannot learn the route user byte by byte.
  if (!timingSafeEqual(digest(peer.user), digest(config.user))) {
    return { code: 'auth_user', reason: `route user mismatch with "${peer.name}"` };
  }
  return undefined;
}

/** Incarnations are `<ms since the epoch>-<random>`: the older (or absent) one is the node left behind by a recovery. */
function incarnationMismatch(peerName: string, theirs: string, ours: string): string {
  const at = (inc: string): number => (inc === '' ? 0 : Number(inc.split('-')[0]) || 0);
  const when = (inc: string): string => (inc === '' ? 'never recovered' : `recovered ${new Date(at(inc)).toISOString()} (incarnation ${inc})`);
  const stale = at(theirs) < at(ours) ? `"${peerName}"` : 'this node';
  return `cluster incarnation mismatch: peer "${peerName}" holds data of the cluster ${when(theirs)}, this node ${when(ours)}; `
    + `${stale} belongs to an earlier incarnation that "membershipd cluster recover --force-new-cluster" replaced and must not rejoin with its old log: `
    + `stop it, wipe its data directory, run "membershipd cluster add NAME HOST:PORT" on the recovered cluster and start it with --initial-cluster-state existing (RUNBOOK "Quorum loss")`;
}

function proofMessage(binding: Uint8Array, verifierNonce: Uint8Array, signer: HelloBody): Buffer {
  return Buffer.concat([proofContext, binding, verifierNonce, signer.nonce, signer.identity, Buffer.from(signer.name)]);
}

function passwordProof(password: string, binding: Uint8Array, verifierNonce: Uint8Array, signerIdentity: Uint8Array): Buffer {
  return createHmac('sha256', password).update(passwordContext).update(binding).update(verifierNonce)
    .update(signerIdentity).digest();
}

/** This node's AUTH, answering the peer's HELLO. */
export function createAuth(config: HandshakeConfig, own: HelloBody, peer: HelloBody, binding: Uint8Array):
  { signature: Uint8Array; passwordProof: Uint8Array } {
  const signature = config.identity.sign(proofMessage(binding, peer.nonce, own));
  return { signature, passwordProof: passwordProof(config.password, binding, peer.nonce, own.identity) };
}

/** Checks the peer's AUTH: possession of its identity key, and knowledge of the route password. */
export function checkAuth(config: HandshakeConfig, own: HelloBody, peer: HelloBody, binding: Uint8Array,
  auth: { signature: Uint8Array; passwordProof: Uint8Array }): Refusal | undefined {
  if (!verifyEd25519(peer.identity, proofMessage(binding, own.nonce, peer), auth.signature)) {
    return { code: 'identity_proof', reason: `"${peer.name}" did not prove possession of identity key ${short(peer.identity)}` };
  }
  const expected = passwordProof(config.password, binding, own.nonce, peer.identity);
  if (auth.passwordProof.length !== expected.length || !timingSafeEqual(auth.passwordProof, expected)) {
    return { code: 'auth_password', reason: `route password mismatch with "${peer.name}"` };
  }
  return undefined;
}
