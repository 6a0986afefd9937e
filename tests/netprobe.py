"""Knock on ports without a Ray token, the way an outsider would; one JSON line per port.

    python tests/netprobe.py HOST PORT...

A port that accepts a connection gets an HTTP request (Ray's agents speak HTTP and answer
401 without the token) or, if it does not speak HTTP/1, a gRPC call to a method of each of
Ray's services (UNAUTHENTICATED without the token; UNIMPLEMENTED where the server has no
such service). Used by tests/test_loopback.py, also from inside a network namespace.
"""

import json
import socket
import sys

import grpc

GRPC_METHODS = [
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.CoreWorkerService/NumPendingTasks",
    "/ray.rpc.ReporterService/GetTraceback",  # the dashboard agent
    "/ray.rpc.ObjectManagerService/Pull",  # the raylet's object manager
]


def probe(host, port):
    try:
        s = socket.create_connection((host, port), timeout=3)
    except OSError as e:
        return {"tcp": "closed", "why": str(e)}
    s.settimeout(3)
    try:
        s.sendall(
            f"GET /api/version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        head = s.recv(200)
    except OSError:
        head = b""
    finally:
        s.close()
    if head.startswith(b"HTTP/1."):
        return {"tcp": "open", "http": int(head.split()[1])}
    out = {"tcp": "open", "grpc": {}}
    ch = grpc.insecure_channel(f"{host}:{port}")
    for m in GRPC_METHODS:
        try:
            ch.unary_unary(m)(b"", timeout=5)
            out["grpc"][m] = "OK"
        except grpc.RpcError as e:
            out["grpc"][m] = e.code().name
    ch.close()
    return out


host = sys.argv[1]
for port in sys.argv[2:]:
    print(json.dumps({"port": int(port), **probe(host, int(port))}), flush=True)
