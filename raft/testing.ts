// Test-only entry of raft/ (CONVENTIONS.md 17): the bugs test/sim plants in the core to prove it catches them.
// Not re-exported from index.ts, so nothing that imports raft/'s public surface can switch one on by accident;
// RaftConfig.plantedBug stays an option (its type is all a production caller sees, and none sets it).
export { PlantedBug } from './raft.js';
