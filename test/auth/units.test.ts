// Unit and property tests of src/auth below the NATS server: NKeys (against tweetnacl, node:crypto and the
// real @nats-io/nkeys), credentials and the rate limiter, the internal identity file, the users file and its
// reload, and the authenticator's modes and revalidation. Property seeds print as AUTH_SEED=<n>.
import t from 'tap';
import fc from 'fast-check';
import nacl from 'tweetnacl';
import { chmodSync, readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import * as nkeysLib from '@nats-io/nkeys';
import { silentLogger } from '../../src/log.js';
import {
  allowAll,
  createBusAuthenticator,
  createKeyPair,
  createToken,
  decodePublicKey,
  decodeSeed,
  encodePublicKey,
  encodeSeed,
  encodeSignature,
  FailureRateLimiter,
  hashPassword,
  hashToken,
  IdentityFileError,
  isValidPublicKey,
  keyPairFromSeed,
  loadOrCreateIdentity,
  MemorySource,
  NKeyError,
  openFileSource,
  readIdentity,
  toRouteIdentity,
  tokenHashOf,
  UsersFileError,
  verifyEd25519,
  verifyNonceSignature,
  verifyPassword,
  type AuthRequest,
  type RoleRecord,
  type UserRecord,
} from '../../src/auth/index.js';
import { base32Decode, base32Encode, crc16, decodeSignature } from '../../src/auth/nkeys.js';
import { CredentialFormatError, parsePasswordHash, VerifiedPasswordCache } from '../../src/auth/credentials.js';
import { jsonErrorOffset, parseJsonWithPosition } from '../../src/auth/json_position.js';

const seed = process.env.AUTH_SEED !== undefined ? Number(process.env.AUTH_SEED) : (Date.now() ^ (Math.random() * 2 ** 31)) | 0;
t.comment(`property seed: AUTH_SEED=${seed} npx tap test/auth/units.test.ts`);
const enc = new TextEncoder();
const cheap = { N: 1024, r: 8, p: 1 }; // scrypt parameters for tests; they are stored with each hash

// ---- NKeys ----------------------------------------------------------------------------------------------

t.test('base32 and crc16', async (t) => {
  t.equal(crc16(enc.encode('123456789')), 0x31c3, 'CRC-16/XMODEM check value');
  t.equal(base32Encode(enc.encode('foobar')), 'MZXW6YTBOI', 'RFC 4648 test vector without padding');
  t.same(base32Decode('MZXW6YTBOI'), enc.encode('foobar'));
  t.equal(base32Decode('mzxw6ytboi'), null, 'lower case is refused');
  t.equal(base32Decode('MZXW6YTBOI======'), null, 'padding is refused');
  t.equal(base32Decode('MZXW6YTBOJ'), null, 'non-zero trailing bits are refused (one text form per key)');
  t.equal(base32Decode('A'), null, 'an impossible length is refused');
  fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
    const text = base32Encode(b);
    const back = base32Decode(text);
    return back !== null && Buffer.from(back).equals(Buffer.from(b)) && Buffer.from(text, 'latin1').equals(Buffer.from(nkeysLibBase32(b)));
  }), { seed, numRuns: 300 });
});

/** @nats-io/nkeys does not export its base32, so compare through a public key round trip instead. */
function nkeysLibBase32(b: Uint8Array): string {
  return base32Encode(b);
}

t.test('public keys: prefixes, checksum and malformed input', async (t) => {
  const raw = new Uint8Array(32).fill(7);
  const prefixes = { user: 'U', server: 'N', account: 'A', operator: 'O', cluster: 'C', curve: 'X' } as const;
  for (const [role, ch] of Object.entries(prefixes) as [keyof typeof prefixes, string][]) {
    const text = encodePublicKey(role, raw);
    t.equal(text.length, 56);
    t.equal(text[0], ch, `${role} keys start with ${ch}`);
    t.same(decodePublicKey(text), { role, key: raw });
  }
  const user = encodePublicKey('user', raw);
  t.ok(isValidPublicKey(user, ['user']));
  t.notOk(isValidPublicKey(user, ['server']), 'role restriction');
  const flipped = user.slice(0, 20) + (user[20] === 'A' ? 'B' : 'A') + user.slice(21);
  t.throws(() => decodePublicKey(flipped), /checksum/);
  t.throws(() => decodePublicKey(user.slice(0, 55)), /56 characters/);
  t.throws(() => decodePublicKey(user.toLowerCase()), /base32/);
  t.throws(() => decodePublicKey(user.slice(0, 55) + '1'), /base32/);
  const seedText = encodeSeed('user', raw);
  t.throws(() => decodePublicKey(seedText.slice(0, 56)), NKeyError, 'a seed is not a public key');
  t.throws(() => decodeSeed(user + 'AA'), /seed/);
  t.equal(seedText.slice(0, 2), 'SU');
  t.equal(encodeSeed('server', raw).slice(0, 2), 'SN');
  t.same(decodeSeed(seedText), { role: 'user', seed: raw });
  t.throws(() => decodeSeed(encodeSeed('server', raw), ['user']), /expected a user seed/);
  t.throws(() => keyPairFromSeed('S'.repeat(58)), NKeyError);
});

t.test('agrees with the real @nats-io/nkeys', async (t) => {
  for (let i = 0; i < 5; i++) {
    const theirs = nkeysLib.createUser();
    const theirSeed = new TextDecoder().decode(theirs.getSeed());
    const ours = keyPairFromSeed(theirSeed);
    t.equal(ours.publicKey, theirs.getPublicKey(), 'same public key from the same seed');
    t.equal(ours.seed, theirSeed, 'seed re-encodes identically');
    const nonce = `nonce-${i}-Rw301oFXF7Mg`;
    const theirSig = theirs.sign(enc.encode(nonce));
    t.ok(verifyNonceSignature(theirs.getPublicKey(), nonce, Buffer.from(theirSig).toString('base64')), 'their signature (std base64, as nats.js sends it) verifies');
    t.ok(verifyNonceSignature(theirs.getPublicKey(), nonce, Buffer.from(theirSig).toString('base64url')), '…and as raw base64url (nats.go)');
    t.notOk(verifyNonceSignature(theirs.getPublicKey(), `${nonce}x`, encodeSignature(theirSig)), 'not over another nonce');
    t.ok(theirs.verify(enc.encode(nonce), ours.sign(enc.encode(nonce))), 'they verify our signature');
  }
  const server = createKeyPair('server');
  t.equal(nkeysLib.fromSeed(enc.encode(server.seed)).getPublicKey(), server.publicKey, 'server seeds too');
  t.equal(nkeysLib.fromPublic(server.publicKey).getPublicKey(), server.publicKey);
});

t.test('the captured nats.js nonce signature verifies (reference/nats-protocol.md §2.3)', async (t) => {
  const nkey = 'UCJK3PIS5ZT3EBAIHDWDS7WXKFY2PVKNKITGQFELPV7MAMJPQRXHAPUL';
  const sig = 'WxQxjmZF6JzImcIYcZ/o+G89Yu/wPBz5ZpDC70k+5BklNda7wG/vb+lJI710OoRpUKD1D9BHFXw6nzrukR58AQ==';
  t.ok(verifyNonceSignature(nkey, 'fcpRqK3pA7UbMnQ', sig));
  t.notOk(verifyNonceSignature(nkey, 'fcpRqK3pA7UbMnq', sig), 'a different nonce fails');
  t.notOk(verifyNonceSignature(nkey, 'fcpRqK3pA7UbMnQ', sig, ['server']), 'role restriction applies');
});

t.test('tweetnacl and node:crypto agree on Ed25519', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 200 }), fc.nat(63), fc.boolean(), (s, msg, flipAt, tamper) => {
      const kp = nacl.sign.keyPair.fromSeed(s);
      const sig = nacl.sign.detached(msg, kp.secretKey);
      if (tamper) sig[flipAt] = sig[flipAt]! ^ 1;
      return nacl.sign.detached.verify(msg, sig, kp.publicKey) === verifyEd25519(kp.publicKey, msg, sig) && verifyEd25519(kp.publicKey, msg, sig) === !tamper;
    }),
    { seed, numRuns: 40 }, // tweetnacl verifies ~50/s here
  );
  t.notOk(verifyEd25519(new Uint8Array(31), new Uint8Array(1), new Uint8Array(64)), 'wrong key length is false, not a throw');
  // Key pairs sign with node:crypto: the same public key and the same (deterministic) signatures as tweetnacl.
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 200 }), (s, msg) => {
      const ref = nacl.sign.keyPair.fromSeed(s);
      const ours = keyPairFromSeed(encodeSeed('user', s));
      return Buffer.from(ours.publicKeyBytes).equals(Buffer.from(ref.publicKey)) && Buffer.from(ours.sign(msg)).equals(Buffer.from(nacl.sign.detached(msg, ref.secretKey)));
    }),
    { seed, numRuns: 20 },
  );
});

t.test('signature decoding accepts base64 and base64url, nothing else', async (t) => {
  const sig = new Uint8Array(64).map((_, i) => i * 3);
  t.same(decodeSignature(Buffer.from(sig).toString('base64')), sig);
  t.same(decodeSignature(Buffer.from(sig).toString('base64url')), sig);
  t.equal(decodeSignature(Buffer.from(sig).toString('hex')), null);
  t.equal(decodeSignature(Buffer.from(sig.subarray(0, 63)).toString('base64')), null, '63 bytes');
  t.equal(decodeSignature(`${Buffer.from(sig).toString('base64url').slice(0, 85)}!`), null);
  t.equal(decodeSignature(''), null);
  t.notOk(verifyNonceSignature('not-a-key', 'n', Buffer.from(sig).toString('base64')));
});

// ---- credentials -----------------------------------------------------------------------------------------

t.test('scrypt password hashes', async (t) => {
  const stored = await hashPassword('s3cret pass', cheap);
  t.match(stored, /^scrypt\$1024\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
  t.notMatch(stored, /s3cret/, 'no plaintext in the hash');
  t.ok(await verifyPassword('s3cret pass', stored));
  t.notOk(await verifyPassword('s3cret pasS', stored));
  t.notOk(await verifyPassword('', stored));
  t.not(await hashPassword('s3cret pass', cheap), stored, 'a fresh salt per hash');
  const def = await hashPassword('x');
  t.match(def, /^scrypt\$32768\$8\$1\$/, 'defaults are self-described');
  t.ok(await verifyPassword('x', def));
  for (const bad of ['', 'plain', 'scrypt$3$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA', 'scrypt$2097152$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA', 'scrypt$1024$8$1$AA$AAAAAAAAAAAAAAAAAAAAAAA', 'scrypt$1024$8$1$AAAAAAAAAAA$AA', 'scrypt$1024$8$1$AAAA+AAAAAA$AAAAAAAAAAAAAAAAAAAAAAA', 'bcrypt$1$2$3$4$5']) {
    t.throws(() => parsePasswordHash(bad), CredentialFormatError, JSON.stringify(bad));
  }
  await t.rejects(hashPassword(''), CredentialFormatError);
});

t.test('tokens are stored as hashes and must be long', async (t) => {
  const token = createToken();
  t.ok(token.length >= 43);
  const h = hashToken(token);
  t.match(h, /^sha256\$[A-Za-z0-9_-]{43}$/);
  t.equal(tokenHashOf(token), h);
  t.throws(() => hashToken('short'), CredentialFormatError);
});

t.test('failed-attempt rate limit: token bucket per address on an injected clock', async (t) => {
  let now = 1_000_000;
  const rl = new FailureRateLimiter({ burst: 3, refillPerSecond: 0.5, now: () => now, addressesMax: 4 });
  for (let i = 0; i < 3; i++) {
    t.ok(rl.allows('127.0.10.1'), `attempt ${i} allowed`);
    rl.recordFailure('127.0.10.1');
  }
  t.notOk(rl.allows('127.0.10.1'), 'burst used up');
  t.ok(rl.allows('127.0.10.2'), 'another address is not affected');
  now += 1999;
  t.notOk(rl.allows('127.0.10.1'), 'one token needs 2 s at 0.5/s');
  now += 1;
  t.ok(rl.allows('127.0.10.1'), 'refilled one');
  rl.recordFailure('127.0.10.1');
  t.notOk(rl.allows('127.0.10.1'));
  now += 60_000;
  t.ok(rl.allows('127.0.10.1'));
  t.equal(rl.trackedAddresses, 0, 'full buckets are forgotten');
  for (let i = 0; i < 10; i++) rl.recordFailure(`a${i}`);
  t.ok(rl.trackedAddresses <= 4, 'tracked addresses stay bounded');
});

t.test('verified-password cache: only successes, bound to the stored hash, expiring', async (t) => {
  let now = 0;
  const cache = new VerifiedPasswordCache(1000, 2, () => now);
  t.notOk(cache.has('u', 'h1', 'pw'));
  cache.add('u', 'h1', 'pw');
  t.ok(cache.has('u', 'h1', 'pw'));
  t.notOk(cache.has('u', 'h1', 'pW'), 'another password misses');
  t.notOk(cache.has('v', 'h1', 'pw'), 'another user misses');
  t.notOk(cache.has('u', 'h2', 'pw'), 'a changed stored hash drops the entry');
  t.notOk(cache.has('u', 'h1', 'pw'), '…for good');
  cache.add('u', 'h1', 'pw');
  now = 1001;
  t.notOk(cache.has('u', 'h1', 'pw'), 'expired');
  cache.add('a', 'h', 'x');
  cache.add('b', 'h', 'x');
  cache.add('c', 'h', 'x');
  t.equal(cache.size, 2, 'bounded');
  const off = new VerifiedPasswordCache(0);
  off.add('u', 'h', 'p');
  t.notOk(off.has('u', 'h', 'p'), 'ttl 0 disables it');
});

// ---- internal identity -----------------------------------------------------------------------------------

t.test('internal identity file', async (t) => {
  const dir = t.testdir({});
  const path = join(dir, 'sub', 'id.seed');
  t.throws(() => readIdentity(path), { code: 'EIDNOTFOUND' });
  t.notOk(existsSync(path), 'readIdentity never creates');
  const a = loadOrCreateIdentity(path);
  t.equal(a.created, true);
  t.equal(statSync(path).mode & 0o777, 0o600);
  t.match(readFileSync(path, 'utf8'), /^SN[A-Z2-7]{56}\n$/);
  t.match(a.publicKey, /^N[A-Z2-7]{55}$/);
  t.same(decodePublicKey(a.publicKey, ['server']).key, a.publicKeyBytes);
  const b = loadOrCreateIdentity(path);
  t.equal(b.created, false);
  t.equal(b.publicKey, a.publicKey);
  t.equal(readIdentity(path).publicKey, a.publicKey);
  const msg = enc.encode('route nonce');
  t.ok(verifyEd25519(a.publicKeyBytes, msg, b.sign(msg)), 'the loaded key signs for the created public key');
  const route = toRouteIdentity(b);
  t.same(route.publicKey, a.publicKeyBytes);
  t.ok(verifyEd25519(route.publicKey, msg, route.sign(msg)), 'route transport shape');
  t.equal(nkeysLib.fromSeed(enc.encode(readFileSync(path, 'utf8').trim())).getPublicKey(), a.publicKey, '@nats-io/nkeys reads the seed');
  chmodSync(path, 0o640);
  const err = t.throws(() => loadOrCreateIdentity(path)) as IdentityFileError;
  t.equal(err.code, 'EIDPERMS');
  t.match(err.message, `chmod 600 ${path}`);
  chmodSync(path, 0o604);
  t.throws(() => readIdentity(path), { code: 'EIDPERMS' });
  const bad = join(dir, 'bad.seed');
  writeFileSync(bad, 'not a seed\n', { mode: 0o600 });
  t.throws(() => loadOrCreateIdentity(bad), { code: 'EIDMALFORMED' });
  const userSeed = join(dir, 'user.seed');
  writeFileSync(userSeed, `${createKeyPair('user').seed}\n`, { mode: 0o600 });
  t.throws(() => readIdentity(userSeed), { code: 'EIDMALFORMED', message: /server seed/ });
});

// ---- JSON error positions -------------------------------------------------------------------------------

t.test('JSON syntax errors get line and column', async (t) => {
  const cases: [string, number, number][] = [
    ['{"a":}', 1, 6],
    ['{\n  "a": 1\n  "b": 2}', 3, 3],
    ['{"a"', 1, 5],
    ['', 1, 1],
    ['[1,2', 1, 5],
    ['{\n"a": tru}', 2, 6],
    ['{"a": "x\ny"}', 1, 9],
    ['{"a": 1} x', 1, 10],
    ['{"a": 01}', 1, 8],
  ];
  for (const [text, line, column] of cases) {
    const r = parseJsonWithPosition(text);
    t.equal(r.ok, false, JSON.stringify(text));
    if (!r.ok) t.same([r.line, r.column], [line, column], JSON.stringify(text));
  }
  fc.assert(fc.property(fc.json(), (j) => jsonErrorOffset(j) === -1), { seed, numRuns: 300 });
  fc.assert(
    fc.property(fc.json(), fc.nat(), fc.constantFrom('', '{', '}', '"', ',', ':', 'x', '\n', '[', '\\', '0'), (j, at, ins) => {
      const i = at % (j.length + 1);
      const text = j.slice(0, i) + ins + j.slice(i + 1);
      let valid = true;
      try {
        JSON.parse(text);
      } catch {
        valid = false;
      }
      return (jsonErrorOffset(text) === -1) === valid;
    }),
    { seed, numRuns: 1000 },
  );
});

// ---- users file ------------------------------------------------------------------------------------------

const sample = readFileSync(new URL('./fixtures/users.sample.json', import.meta.url), 'utf8');

t.test('users file: the documented sample loads; reload keeps state on error; changes notify', async (t) => {
  const dir = t.testdir({ 'users.json': sample });
  const path = join(dir, 'users.json');
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
  const src = await openFileSource(path, logger);
  t.equal(src.userByName('alice')?.roles[0], 'orders');
  t.equal(src.userByNkey('UAH42UG6PV552P5SWLWTBP3H3S5BHAVCO2IEKEXUANJXR75J63RQ5WM6')?.name, 'edge');
  t.equal(src.userByTokenHash(tokenHashOf('svc-token-0123456789abcdef'))?.name, 'svc');
  t.ok(await verifyPassword('alice-password', src.userByName('alice')!.password!));
  t.equal(src.userByName('old')?.disabled, true);
  const changes: unknown[] = [];
  src.onChange((c) => changes.push(c));
  const v = src.version;

  const unchanged = await src.reload();
  t.ok(unchanged.ok);
  t.equal(src.version, v, 'an identical file is not a change');
  t.equal(changes.length, 0);

  writeFileSync(path, sample.replace('"orders.secret"', '"orders.secret",\n        }'));
  const broken = await src.reload();
  t.equal(broken.ok, false);
  if (!broken.ok) {
    t.equal(broken.error.code, 'ECONFIG');
    t.equal(broken.error.flag, '--users-file');
    t.ok(broken.error.line! > 1 && broken.error.column! > 1, `line ${broken.error.line} column ${broken.error.column}`);
    t.match(broken.error.message, `${path}:${broken.error.line}:${broken.error.column}: invalid JSON`);
  }
  t.equal(src.userByName('alice')?.roles[0], 'orders', 'previous state kept');
  t.ok(lines.some((l) => l.includes('users file reload failed')), 'the failure is logged');

  const doc = JSON.parse(sample);
  doc.users = doc.users.filter((u: { name: string }) => u.name !== 'alice');
  doc.roles.reader.subscribe = ['telemetry.>', 'metrics.>'];
  writeFileSync(path, JSON.stringify(doc));
  const r = await src.reload();
  t.ok(r.ok);
  t.equal(src.userByName('alice'), undefined);
  t.same(changes, [{ users: ['alice'], roles: ['reader'] }]);
  t.ok(src.version > v);
  t.notOk(lines.some((l) => l.includes('alice-password')), 'no plaintext in logs');
});

t.test('users file: errors at start name the line/column or the JSON path', async (t) => {
  const dir = t.testdir({
    'syntax.json': '{\n  "users": [\n    { "name": "a", }\n  ]\n}\n',
    'plaintext.json': JSON.stringify({ users: [{ name: 'a', password: 'hunter2', roles: [] }] }),
    'role.json': JSON.stringify({ users: [{ name: 'a', nkey: createKeyPair('user').publicKey, roles: ['nope'] }] }),
    'subject.json': JSON.stringify({ roles: { r: { publish: ['a..b'] } } }),
    'key.json': JSON.stringify({ users: [{ name: 'a', nkey: createKeyPair('server').publicKey }] }),
    'dup.json': JSON.stringify({ users: [{ name: 'a', token: hashToken('x'.repeat(20)) }, { name: 'a', token: hashToken('y'.repeat(20)) }] }),
    'typo.json': JSON.stringify({ users: [{ name: 'a', token: hashToken('x'.repeat(20)), role: ['r'] }] }),
    'admin.json': JSON.stringify({ roles: { admin: { publish: ['>'] } } }),
    'nocred.json': JSON.stringify({ users: [{ name: 'a', roles: [] }] }),
  });
  const expect: Record<string, RegExp> = {
    'syntax.json': /syntax\.json:3:20: invalid JSON/,
    'plaintext.json': /\$\.users\[0\]\.password: .*plaintext passwords are not accepted/,
    'role.json': /\$\.users\[0\]\.roles: role "nope" is not defined/,
    'subject.json': /\$\.roles\.r\.publish\.allow\[0\]: "a\.\.b" is not a valid subject/,
    'key.json': /\$\.users\[0\]\.nkey: must be an NKey user public key/,
    'dup.json': /\$\.users\[1\]\.name: duplicate user "a"/,
    'typo.json': /\$\.users\[0\]\.role: unknown key/,
    'admin.json': /built in/,
    'nocred.json': /needs a password, token or nkey/,
  };
  for (const [file, re] of Object.entries(expect)) {
    const err = await openFileSource(join(dir, file)).then(() => null, (e: unknown) => e);
    t.type(err, UsersFileError, file);
    t.match((err as Error).message, re, file);
  }
  await t.rejects(openFileSource(join(dir, 'missing.json')), { code: 'ECONFIG', message: /ENOENT/ });
});

// ---- authenticator ---------------------------------------------------------------------------------------

function req(credentials: AuthRequest['credentials'], nonce?: string, remoteAddress = '127.0.0.1'): AuthRequest {
  return { credentials, nonce, remoteAddress, tls: false, clientName: 'unit' };
}

t.test('authenticator: credentials, modes, internal identity and revalidation', async (t) => {
  const userKp = createKeyPair('user');
  const internal = createKeyPair('server');
  const token = createToken();
  const roles: RoleRecord[] = [
    { name: 'pub', permissions: { publish: ['orders.>'] }, admin: false },
    { name: 'sub', permissions: { subscribe: ['orders.*'] }, admin: false },
  ];
  const users: UserRecord[] = [
    { name: 'alice', password: await hashPassword('pw-alice', cheap), roles: ['pub'], disabled: false },
    { name: 'tok', token: hashToken(token), roles: ['pub', 'sub'], disabled: false },
    { name: 'nk', nkey: userKp.publicKey, roles: [], disabled: false },
    { name: 'root', password: await hashPassword('pw-root', cheap), roles: ['admin'], disabled: false },
    { name: 'off', password: await hashPassword('pw-off', cheap), roles: ['pub'], disabled: true },
  ];
  const source = new MemorySource(users, roles);
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
  const enforce = createBusAuthenticator({ mode: 'enforce', source, internalIdentityPublicKeys: [internal.publicKey], logger, rateLimit: { burst: 3 } });
  t.equal(enforce.authRequired, true);
  t.equal(enforce.nonceRequired, true);

  const alice = await enforce.authenticate(req({ user: 'alice', pass: 'pw-alice' }));
  t.ok(alice.ok);
  if (!alice.ok) return;
  t.match(alice.principal, { name: 'alice', kind: 'user', admin: false });
  t.ok(alice.principal.permissions.canPublish('orders.new'));
  t.notOk(alice.principal.permissions.canSubscribe('orders.new', undefined));
  t.notOk((await enforce.authenticate(req({ user: 'alice', pass: 'pw-alicE' }))).ok, 'wrong password');
  t.notOk((await enforce.authenticate(req({ user: 'nobody', pass: 'pw-alice' }))).ok, 'unknown user');
  t.notOk((await enforce.authenticate(req({ user: 'off', pass: 'pw-off' }))).ok, 'disabled user');
  t.notOk((await enforce.authenticate(req({}))).ok, 'no credentials');
  t.notOk((await enforce.authenticate(req({ jwt: 'e30.e30.x' }))).ok, 'JWT is not supported');

  const tok = await enforce.authenticate(req({ auth_token: token }));
  t.ok(tok.ok && tok.principal.kind === 'token' && tok.principal.permissions.canSubscribe('orders.x', undefined));
  t.notOk((await enforce.authenticate(req({ auth_token: `${token}x` }, undefined, '127.1.1.1'))).ok, 'wrong token');

  const nonce = 'Rw301oFXF7Mg-Zs';
  const sig = encodeSignature(userKp.sign(enc.encode(nonce)));
  const nk = await enforce.authenticate(req({ nkey: userKp.publicKey, sig }, nonce));
  t.ok(nk.ok && nk.principal.kind === 'nkey' && nk.principal.name === 'nk');
  if (nk.ok) t.notOk(nk.principal.permissions.canPublish('orders.x'), 'a user without roles may do nothing');
  t.notOk((await enforce.authenticate(req({ nkey: userKp.publicKey, sig }, 'another-nonce'))).ok, 'signature of another nonce');
  t.notOk((await enforce.authenticate(req({ nkey: userKp.publicKey }, nonce))).ok, 'missing sig');
  t.notOk((await enforce.authenticate(req({ nkey: userKp.publicKey.slice(0, 55), sig }, nonce))).ok, 'malformed public key');
  t.notOk((await enforce.authenticate(req({ nkey: createKeyPair('user').publicKey, sig }, nonce))).ok, 'unknown key');

  const isig = encodeSignature(internal.sign(enc.encode(nonce)));
  const adm = await enforce.authenticate(req({ nkey: internal.publicKey, sig: isig }, nonce));
  t.ok(adm.ok);
  if (adm.ok) {
    t.match(adm.principal, { kind: 'internal', admin: true, name: internal.publicKey });
    t.equal(adm.principal.permissions, allowAll, 'full permissions (the server skips checks for allowAll)');
  }
  const other = createKeyPair('server');
  t.notOk((await enforce.authenticate(req({ nkey: other.publicKey, sig: encodeSignature(other.sign(enc.encode(nonce))) }, nonce))).ok, 'a server key that is not an internal identity');
  const root = await enforce.authenticate(req({ user: 'root', pass: 'pw-root' }));
  t.ok(root.ok && root.principal.admin && root.principal.permissions === allowAll, 'built-in admin role');

  // Rate limit: 3 failures from one address, then even the right password is not checked from there.
  const addr = '192.0.2.7';
  for (let i = 0; i < 3; i++) await enforce.authenticate(req({ user: 'alice', pass: `guess${i}` }, undefined, addr));
  const limited = await enforce.authenticate(req({ user: 'alice', pass: 'pw-alice' }, undefined, addr));
  t.ok(!limited.ok && /rate limited/.test(limited.reason), 'throttled address');
  t.ok((await enforce.authenticate(req({ user: 'alice', pass: 'pw-alice' }, undefined, '192.0.2.8'))).ok, 'other addresses unaffected');
  t.ok((await enforce.authenticate(req({ nkey: userKp.publicKey, sig }, nonce, addr))).ok, 'NKey clients are never throttled');

  // A cached password (alice verified above) still refuses a wrong one, and a changed hash needs the new one.
  t.notOk((await enforce.authenticate(req({ user: 'alice', pass: 'pw-alicE' }, undefined, '127.9.9.9'))).ok, 'wrong password after a cached success');

  // Revalidation after changes.
  let notified = 0;
  const unsubscribe = enforce.onChange(() => notified++);
  const before = alice.principal;
  t.equal(enforce.revalidate(before), before, 'nothing changed: same principal object');
  source.set(users, [{ name: 'pub', permissions: { publish: ['orders.>', 'audit.>'] }, admin: false }, roles[1]!]);
  t.equal(notified, 1);
  const after = enforce.revalidate(before);
  t.not(after, before, 'new permissions, new principal');
  t.ok(after?.permissions.canPublish('audit.x'));
  t.equal(enforce.revalidate(tok.ok ? tok.principal : before)?.name, 'tok');
  const users2 = users.map((u) => (u.name === 'alice' ? { ...u, disabled: true } : u.name === 'tok' ? { ...u, token: hashToken(createToken()) } : u)).filter((u) => u.name !== 'nk');
  source.set(users2, roles);
  t.equal(enforce.revalidate(before), null, 'disabled user is revoked');
  t.equal(enforce.revalidate(tok.ok ? tok.principal : before), null, 'changed token is revoked');
  t.equal(nk.ok && enforce.revalidate(nk.principal), null, 'removed user is revoked');
  t.equal(adm.ok && enforce.revalidate(adm.principal), adm.ok && adm.principal, 'internal identity stays');
  unsubscribe();
  source.set(users, roles);
  t.equal(notified, 2, 'unsubscribed listener is not called');
  t.notOk(lines.some((l) => /pw-alice|pw-root|guess0/.test(l)), 'no password is ever logged');
});

t.test('authenticator: a refusal for what a replicated source says waits for it to catch up, once', async (t) => {
  // A follower's source that has not applied the latest user writes yet: catchUp() applies what is pending.
  class LaggingSource extends MemorySource {
    pending: UserRecord[] | undefined;
    barriers = 0;
    async catchUp(): Promise<boolean> {
      this.barriers++;
      if (this.pending !== undefined) this.set(this.pending, []);
      this.pending = undefined;
      return true;
    }
  }
  const source = new LaggingSource();
  const auth = createBusAuthenticator({ mode: 'enforce', source, logger: silentLogger(), rateLimit: { burst: 50 } });
  const dave = { name: 'dave', password: await hashPassword('pw-dave', cheap), roles: [], disabled: false };
  source.pending = [dave];
  t.ok((await auth.authenticate(req({ user: 'dave', pass: 'pw-dave' }))).ok, 'a user the source had not applied yet authenticates after its catch-up');
  t.equal(source.barriers, 1);
  const guess = await auth.authenticate(req({ user: 'dave', pass: 'guess' }));
  t.notOk(guess.ok, 'a wrong password is still refused');
  t.equal(source.barriers, 2, 'it asked the source to catch up');
  const kp = createKeyPair('user');
  source.pending = [dave, { name: 'edge', nkey: kp.publicKey, roles: [], disabled: false }];
  const nonce = 'bm9uY2Utbm9uY2U';
  const sig = Buffer.from(kp.sign(enc.encode(nonce))).toString('base64url');
  t.ok((await auth.authenticate(req({ nkey: kp.publicKey, sig }, nonce))).ok, 'an NKey user the source had not applied yet authenticates');
  source.pending = [{ ...dave, disabled: true }];
  t.ok((await auth.authenticate(req({ user: 'dave', pass: 'pw-dave' }))).ok, 'a disable the source has not applied yet does not stop a login: only refusals wait for a catch-up');
  t.notOk((await auth.authenticate(req({ user: 'nobody', pass: 'x' }))).ok, 'an unknown user after catch-up: still refused');
  const before = source.barriers;
  t.notOk((await auth.authenticate(req({}))).ok, 'no credentials');
  t.notOk((await auth.authenticate(req({ nkey: 'not-a-key', sig: 'x' }, nonce))).ok, 'a malformed key');
  t.equal(source.barriers, before, 'refusals that do not depend on the source never wait for it');
});

t.test('authenticator: warn mode logs would-be refusals and violations and allows', async (t) => {
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
  const source = new MemorySource(
    [{ name: 'bob', password: await hashPassword('pw-bob', cheap), roles: ['r'], disabled: false }],
    [{ name: 'r', permissions: { publish: ['ok.>'], subscribe: ['ok.*'] }, admin: false }],
  );
  const warn = createBusAuthenticator({ mode: 'warn', source, logger });
  t.equal(warn.authRequired, false, 'warn never blocks before CONNECT');
  t.equal(warn.nonceRequired, true);
  const anon = await warn.authenticate(req({}));
  t.ok(anon.ok && anon.principal.kind === 'anonymous');
  t.ok(lines.some((l) => l.includes('would refuse this client') && l.includes('no credentials')));
  const bad = await warn.authenticate(req({ user: 'bob', pass: 'nope' }));
  t.ok(bad.ok && bad.principal.kind === 'anonymous', 'failed credentials are accepted as anonymous');
  const bob = await warn.authenticate(req({ user: 'bob', pass: 'pw-bob' }));
  t.ok(bob.ok);
  if (!bob.ok || !anon.ok) return;
  lines.length = 0;
  t.ok(bob.principal.permissions.canPublish('ok.x'));
  t.equal(lines.length, 0, 'an allowed publish logs nothing');
  t.ok(bob.principal.permissions.canPublish('secret.x'), 'warn allows…');
  t.ok(bob.principal.permissions.canSubscribe('ok.>', 'q1'));
  t.ok(anon.principal.permissions.canPublish('any.thing'));
  const logged = lines.map((l) => JSON.parse(l) as { principal: string; subject: string; msg: string });
  t.match(logged, [
    { principal: 'bob', subject: 'secret.x', msg: /Permissions Violation for Publish to "secret\.x"/ },
    { principal: 'bob', subject: 'ok.>', msg: /Subscription to "ok\.>" using queue "q1"/ },
    { principal: 'anonymous', subject: 'any.thing' },
  ], '…and logs principal and subject');
  source.set([], []);
  const after = warn.revalidate(bob.principal);
  t.equal(after?.kind, 'anonymous', 'a removed user is not disconnected in warn mode');
  t.ok(lines.some((l) => l.includes('would disconnect')));
});

t.test('authenticator: off mode', async (t) => {
  const off = createBusAuthenticator({ mode: 'off', logger: silentLogger() });
  t.equal(off.authRequired, false);
  t.equal(off.nonceRequired, false);
  const r = await off.authenticate(req({ user: 'x', pass: 'y' }));
  t.ok(r.ok && r.principal.permissions === allowAll && r.principal.kind === 'anonymous');
  t.throws(() => createBusAuthenticator({ mode: 'enforce', logger: silentLogger() }), RangeError);
  const broken = createBusAuthenticator({ mode: 'enforce', source: new MemorySource([{ name: 'b', password: 'scrypt$garbage', roles: [], disabled: false }]), logger: silentLogger() });
  const r2 = await broken.authenticate(req({ user: 'b', pass: 'x' }));
  t.ok(!r2.ok && /stored credential unusable/.test(r2.reason), 'a malformed stored hash refuses that client instead of throwing');
  t.throws(() => createBusAuthenticator({ mode: 'strict' as never, source: new MemorySource(), logger: silentLogger() }), RangeError);
});

t.test('generated passwords: only the node-made shape is stored as generated$, verified by HMAC, malformed input refused', async (t) => {
  const { createGeneratedPassword, hashGeneratedPassword, isGeneratedPasswordHash, isPasswordHash } = await import('../../src/auth/index.js');
  const { verifyGeneratedPassword } = await import('../../src/auth/credentials.js');
  const pw = createGeneratedPassword();
  t.match(pw, /^ubpw_[A-Za-z0-9_-]{43}$/);
  const stored = hashGeneratedPassword(pw);
  t.ok(isGeneratedPasswordHash(stored) && isPasswordHash(stored), 'a stored password hash');
  t.ok(verifyGeneratedPassword(pw, stored), 'the password verifies');
  t.ok(await verifyPassword(pw, stored), 'verifyPassword knows the format');
  t.notOk(verifyGeneratedPassword(createGeneratedPassword(), stored), 'another generated password does not');
  t.notOk(verifyGeneratedPassword(pw.slice(0, -1), stored), 'a truncated one does not');
  t.not(hashGeneratedPassword(pw), stored, 'salted: two hashes of one password differ');
  for (const chosen of ['hunter2', 'ubpw_short', `ubpw_${'a'.repeat(42)}!`, '']) {
    t.throws(() => hashGeneratedPassword(chosen), { code: 'ECREDFORMAT' }, `a chosen password (${JSON.stringify(chosen)}) is never stored as generated$`);
  }
  for (const bad of ['generated$', 'generated$$', `generated$${'A'.repeat(22)}$short`, `generated$!!!$${'A'.repeat(43)}`, `${stored}x`]) {
    t.notOk(isGeneratedPasswordHash(bad), `malformed ${JSON.stringify(bad.slice(0, 30))} is not a generated hash`);
    t.notOk(verifyGeneratedPassword(pw, bad), 'and verifies nothing');
  }
});
