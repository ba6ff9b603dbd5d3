"""A stand-in for a CARLA server process in supervisor tests: listens on 127.0.0.1:PORT and prints to stdout.

Usage: ``python tcp_listener.py PORT [DELAY_S]``; it opens the port after DELAY_S seconds (default 0) and accepts
and closes connections until killed. It speaks no CARLA protocol: only TCP connects may be pointed at it.
"""

from __future__ import annotations

import socket
import sys
import time

port = int(sys.argv[1])
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    print(f"fake CARLA server listening on {port}", flush=True)
    while True:
        connection, _ = server.accept()
        connection.close()
