#!/usr/bin/env python3
"""Runs a benchmark client and records where the machine's CPU went meanwhile.

    cpu.py --out FILE --pg-dir PGDATA [--server-pid PID] -- CMD [ARGS...]

Runs CMD (its stdout and stderr pass through) and writes to FILE, as JSON, the CPU seconds
used during the run by:
  client    CMD and its children (getrusage of the reaped children);
  postgres  the cluster of PGDATA: every live process whose parent is the postmaster, plus the
            postmaster itself and the backends it reaped (cutime/cstime);
  server    the process PID (all threads), if given;
  machine   every core, from /proc/stat (busy = everything but idle and iowait);
with the wall time, so `cpu / wall` is the number of cores each one kept busy. Exits with
CMD's exit code. Linux only (reads /proc).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2 :].split()


def process_cpu(pid, children=False):
    f = stat_fields(pid)
    if f is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks / TICK


def postgres_cpu(pgdata):
    with open(os.path.join(pgdata, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    total = process_cpu(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = stat_fields(entry)
            if f is not None and int(f[1]) == postmaster:
                total += (int(f[11]) + int(f[12])) / TICK
    return total


def machine_cpu():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # counted in user.
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / TICK, total / TICK


def snapshot(args):
    busy, total = machine_cpu()
    return {
        "postgres": postgres_cpu(args.pg_dir),
        "server": process_cpu(args.server_pid) if args.server_pid else 0.0,
        "busy": busy,
        "total": total,
        "wall": time.monotonic(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--pg-dir", required=True)
    p.add_argument("--server-pid", type=int)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command to run")

    before = snapshot(args)
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = subprocess.call(cmd)
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = snapshot(args)

    wall = after["wall"] - before["wall"]
    result = {
        "wall_s": round(wall, 3),
        "client_cpu_s": round(
            (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime), 3
        ),
        "postgres_cpu_s": round(after["postgres"] - before["postgres"], 3),
        "server_cpu_s": round(after["server"] - before["server"], 3),
        "machine_busy_s": round(after["busy"] - before["busy"], 3),
        "machine_total_s": round(after["total"] - before["total"], 3),
        "cores": os.cpu_count(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
        f.write("\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
