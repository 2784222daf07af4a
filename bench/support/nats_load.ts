// Client-side load for the NATS benchmarks, the same in every bench so their figures compare.
import type { NatsConnection } from '@nats-io/transport-node';

/**
 * Publishes `count` messages, the i-th to subjects[i % subjects.length], in slices of 2,000, yielding a
 * turn of the event loop between slices so that subscribers in this process keep reading; then flushes.
 */
export async function publishInSlices(pub: NatsConnection, subjects: readonly string[], payload: Uint8Array, count: number): Promise<void> {
  for (let sent = 0; sent < count;) {
    const n = Math.min(2000, count - sent);
    for (let i = 0; i < n; i++) pub.publish(subjects[(sent + i) % subjects.length]!, payload);
    sent += n;
    await new Promise((r) => setImmediate(r));
  }
  await pub.flush();
}
