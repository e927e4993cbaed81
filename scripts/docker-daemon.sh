#!/usr/bin/env bash
# Starts or stops the Docker daemon the image tests use, the way these machines allow one:
#   dockerd --iptables=false --ip6tables=false --bridge=none   (containers use --network host)
# `start` does nothing when a daemon already answers (a lab's own, or one started earlier) and
# otherwise starts one and records its pid in target/dockerd.pid; `stop` stops only a daemon
# this script started. scripts/setup.sh installs docker.io.
#
# Usage: scripts/docker-daemon.sh start|stop
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=target/dockerd.pid
log=target/dockerd.log

answers() { docker info >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if answers; then exit 0; fi
    command -v dockerd >/dev/null || { echo "docker-daemon: dockerd is missing (scripts/setup.sh installs docker.io)" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "docker-daemon: starting dockerd needs root" >&2; exit 1; }
    mkdir -p target
    # overlay2 where the kernel has it (much lighter than vfs); containerd comes with docker.io
    setsid dockerd --iptables=false --ip6tables=false --bridge=none >"$log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 1 60); do
      if answers; then echo "docker-daemon: started dockerd (pid $(cat "$pidfile"), log $log)" >&2; exit 0; fi
      sleep 0.5
    done
    echo "docker-daemon: dockerd did not answer within 30 s:" >&2
    tail -20 "$log" >&2
    exit 1
    ;;
  stop)
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    rm -f "$pidfile"
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      echo "docker-daemon: stopped dockerd (pid $pid)" >&2
    fi
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
