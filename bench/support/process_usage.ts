// CPU and memory a process has used. On a machine shared by several engineers wall-clock rates swing with
// the others' load; CPU time per unit of work is the steadier figure, so most benches report it too.
import { readFileSync } from 'node:fs';

/** user+system CPU seconds of process `pid` so far: /proc/<pid>/stat fields 14 and 15 (utime, stime), clock ticks of 10 ms. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident set size of process `pid` in MB (VmRSS); NaN when not reported. */
export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** user+system CPU µs this process has used since `start` (a process.cpuUsage() reading). */
export function cpuMicrosSince(start: NodeJS.CpuUsage): number {
  const c = process.cpuUsage(start);
  return c.user + c.system;
}
