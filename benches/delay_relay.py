#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that delays every byte by a fixed time.

    benches/delay_relay.py TARGET_PORT [ONE_WAY_DELAY_MS]

Listens on 127.0.0.1 on a free port, prints that port as the first line on
stdout, and forwards every accepted connection to 127.0.0.1:TARGET_PORT
(any number of connections, until killed). Each direction adds
ONE_WAY_DELAY_MS (default 5, so 10 ms of round trip); 0 forwards at once
through the same code, so a zero-delay run measures the relay's own cost.

The delay must not limit throughput, or the benchmark would measure the
relay instead of the protocol: a reader thread keeps reading, stamps each
chunk with its arrival time and queues it; a writer thread sends each chunk
once its time is due. So at any moment up to one delay's worth of data is
in flight inside the relay, like on a long link. The queue is bounded
(QUEUE_LIMIT bytes per direction) only so that a stalled peer cannot make
the relay grow without end; it is far above bandwidth x delay on loopback.
"""

import collections
import socket
import sys
import threading
import time

CHUNK = 1 << 20
QUEUE_LIMIT = 256 << 20


def pump(src, dst, delay):
    """Copy src to dst, each chunk delayed by `delay` seconds after arrival."""
    queue = collections.deque()
    cond = threading.Condition()
    state = {"bytes": 0, "eof": False, "dead": False}

    def read():
        try:
            while True:
                data = src.recv(CHUNK)
                due = time.monotonic() + delay
                with cond:
                    while state["bytes"] > QUEUE_LIMIT and not state["dead"]:
                        cond.wait()
                    if state["dead"]:
                        return
                    if not data:
                        state["eof"] = True
                        cond.notify_all()
                        return
                    queue.append((due, data))
                    state["bytes"] += len(data)
                    cond.notify_all()
        except OSError:
            with cond:
                state["eof"] = True
                cond.notify_all()

    def write():
        try:
            while True:
                with cond:
                    while not queue and not state["eof"]:
                        cond.wait()
                    if not queue:
                        break
                    due, data = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
                with cond:
                    queue.popleft()
                    state["bytes"] -= len(data)
                    cond.notify_all()
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # The peer is gone: stop this direction and let the sockets close.
            with cond:
                state["dead"] = True
                cond.notify_all()
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    reader = threading.Thread(target=read, daemon=True)
    writer = threading.Thread(target=write, daemon=True)
    reader.start()
    writer.start()
    return writer


def serve(client, target_port, delay):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError as e:
        print(f"delay_relay: connect to port {target_port}: {e}", file=sys.stderr)
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = pump(client, upstream, delay)
    down = pump(upstream, client, delay)
    up.join()
    down.join()
    client.close()
    upstream.close()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[2].strip())
    target_port = int(sys.argv[1])
    delay = (float(sys.argv[2]) if len(sys.argv) == 3 else 5.0) / 1000.0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=serve, args=(client, target_port, delay), daemon=True
        ).start()


if __name__ == "__main__":
    main()
