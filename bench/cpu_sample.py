#!/usr/bin/env python3
"""Prints three CPU counters, in clock ticks: the host's busy time, the
host's total time (all CPUs), and the time used by the processes of the
process group this script runs in (run.sh, its servers, and its finished
children such as wrk, which the shell's cutime/cstime hold). run.sh
subtracts two samples to tell how much of the host other work used
during a run.
"""

import os


def main():
    pgrp = os.getpgrp()
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal
        ticks = [int(v) for v in f.readline().split()[1:9]]
    total = sum(ticks)
    # Interrupt time is left out: on loopback most of it is the kernel
    # moving the benchmark's own packets, and no process is charged for it.
    busy = total - ticks[3] - ticks[4] - ticks[5] - ticks[6]

    ours = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the process ended meanwhile
        # Fields after the command name, which may hold spaces and ')'.
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) != pgrp:
            continue
        ours += sum(int(v) for v in rest[11:15])  # utime stime cutime cstime
    print(busy, total, ours)


if __name__ == "__main__":
    main()
