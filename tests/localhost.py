"""Ports on 127.0.0.1 for tests that start servers or cluster workers in subprocesses."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (Slurm tasks on one node use port_base + local rank)."""
    for _ in range(50):
        (port,) = free_ports(1)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")
