// Pure quorum decisions, property-tested against slow references in test/raft (CONVENTIONS §8).
// Only voters count; learners never do (Raft thesis §4.2.1).

export const VoteResult = { pending: 'pending', won: 'won', lost: 'lost' } as const;
export type VoteResult = (typeof VoteResult)[keyof typeof VoteResult];

/**
 * The largest index that a majority of `voters` have matched: sort matches descending and take the
 * one at position floor(n/2). 0 for an empty voter set (no quorum exists).
 */
export function committedIndex(voters: readonly number[], match: (id: number) => number, scratch: number[] = []): number {
  const n = voters.length;
  if (n === 0) return 0;
  if (n === 1) return match(voters[0]!);
  scratch.length = n;
  for (let i = 0; i < n; i++) scratch[i] = match(voters[i]!);
  scratch.sort((a, b) => b - a);
  return scratch[n >> 1]!;
}

/** Whether the granted/rejected votes so far decide the election among `voters`. */
export function voteResult(voters: readonly number[], votes: ReadonlyMap<number, boolean>): VoteResult {
  const n = voters.length;
  if (n === 0) return VoteResult.lost;
  const q = (n >> 1) + 1;
  let granted = 0;
  let rejected = 0;
  for (const id of voters) {
    const v = votes.get(id);
    if (v === true) granted++;
    else if (v === false) rejected++;
  }
  if (granted >= q) return VoteResult.won;
  if (n - rejected < q) return VoteResult.lost;
  return VoteResult.pending;
}

/** Whether the set of `active` node ids contains a majority of `voters`. */
export function hasQuorum(voters: readonly number[], active: (id: number) => boolean): boolean {
  if (voters.length === 0) return false;
  let n = 0;
  for (const id of voters) if (active(id)) n++;
  return n >= (voters.length >> 1) + 1;
}
