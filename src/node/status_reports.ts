// What a node reports about itself, read live (issue 17: the status getters that were one-line delegates on
// ClusterNode, grouped as ClusterNode.status): /raftz, /routez, /varz, /metrics, /healthz, `cluster status` (with
// the questions asked of the peers) and STREAM.INFO `cluster`. Each call builds the node's NodeStatusView afresh and
// hands it to status.ts's functions; what persists between calls is only the catch-up verdict (CatchUp) and the
// pending `cluster status` questions (StatusQueries).
import type { Logger } from '../log.js';
import type { Health } from './health.js';
import {
  CatchUp, StatusQueries, clusterStatusFrom, jsClusterInfo, metricsText, nodeHealth, raftz, routez, selfReport, varz,
  type ClusterStatus, type JsClusterInfo, type NodeStatusView,
} from './status.js';
import { encodeStatusRequest, type MemberReport } from './wire.js';

/** The node's view minus its health, which the reports add (nodeHealth with their CatchUp). */
export type NodeStatusSource = () => Omit<NodeStatusView, 'health'>;

/** The reports as the node's callers see them (ClusterNode.status); answers to questions arrive from the router. */
export type NodeStatus = Omit<StatusReports, 'answered'>;

export class StatusReports {
  private readonly source: NodeStatusSource;
  /** Applied the leader's own commit index once since start: until then health says "catching up". */
  private readonly catchUp: CatchUp;
  /** `cluster status` questions this node asked its peers. */
  private readonly questions: StatusQueries;

  /** `send`: a frame over a peer's route (false when it is not up), carrying the `cluster status` question. */
  constructor(source: NodeStatusSource, send: (peer: string, frame: { kind: 'raft'; data: unknown }) => boolean, log: Logger) {
    this.source = source;
    this.catchUp = new CatchUp((lead) => log.warn({ lead }, 'the leader\'s heartbeats carry no commit index (an older version?): healthy once applied reaches this node\'s own commit'));
    this.questions = new StatusQueries((peer, reqId) => send(peer, { kind: 'raft', data: encodeStatusRequest(reqId) }));
  }

  private view(): NodeStatusView {
    const v: NodeStatusView = { ...this.source(), health: () => nodeHealth(v, this.catchUp) };
    return v;
  }

  health(): Health {
    return nodeHealth(this.view(), this.catchUp);
  }

  /**
   * Whether this node's state machine is current: it applied the leader's own commit index since it started and
   * is not recovering lost data. Until then, what it reads locally (stale) is no basis for a write.
   */
  isCurrent(): boolean {
    const v = this.view();
    const st = v.raft?.basicStatus();
    return st !== undefined && this.catchUp.check(st, v.applied, v.now, v.electionWindowMs, v.snapshotStream.receiving()) === undefined;
  }

  /** This node's own view (indexes, state, health) as `cluster status` shows it. */
  selfReport(): MemberReport {
    return selfReport(this.view());
  }

  /**
   * Every slot with its role and indexes: this node's view plus each connected peer's own report (asked over
   * the route; a peer that does not answer within `timeoutMs` is unreachable). Lag is against the leader's
   * commit index as the leader reports it (or the highest commit seen when no leader answered).
   */
  async clusterStatus(timeoutMs = 1500): Promise<ClusterStatus> {
    const self = this.selfReport();
    const reports = new Map<number, MemberReport>(self.id !== 0 ? [[self.id, self]] : []);
    const v = this.view();
    await this.questions.ask(v.transport.upPeers(), v.peerToId, timeoutMs, reports);
    return clusterStatusFrom(this.view(), reports);
  }

  /** A peer answered one of this node's `cluster status` questions (frame_router.ts). */
  answered(reqId: number, report: MemberReport): void {
    this.questions.answered(reqId, report);
  }

  /** STREAM.INFO `cluster` (status.ts jsClusterInfo); undefined with a single voter. */
  jsClusterInfo(): JsClusterInfo | undefined {
    return jsClusterInfo(this.view());
  }

  raftz(): Record<string, unknown> {
    return raftz(this.view());
  }

  routez(): Record<string, unknown> {
    return routez(this.view());
  }

  varz(): Record<string, unknown> {
    return varz(this.view());
  }

  metricsText(): string {
    return metricsText(this.view());
  }
}
