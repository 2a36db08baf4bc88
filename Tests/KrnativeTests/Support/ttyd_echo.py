#!/usr/bin/env python3
"""Types into a ttyd as the browser does and reports what came back.

    ttyd_echo.py [--readonly] -- TTYD_ARGV...

Starts `TTYD_ARGV -p PORT [-R] cat` (PORT a free loopback port: the agent's form, without -W),
then, with nothing but the standard library: GET /token, a WebSocket (RFC 6455) to /ws with the
subprotocol "tty", the JSON_DATA init message {"AuthToken", "columns", "rows"}, and an INPUT
message ('0' + text). Collects OUTPUT messages ('0' + bytes) for a few seconds and prints one
JSON object: {"echoed": bool, "output": str, "port": int}. ttyd 1.7.7's src/protocol.c and
src/server.h define the message types.
"""
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def send_frame(sock, payload, opcode=0x2):
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def read_frame(sock):
    first, second = read_exact(sock, 2)
    n = second & 0x7F
    if n == 126:
        n = struct.unpack(">H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", read_exact(sock, 8))[0]
    mask = read_exact(sock, 4) if second & 0x80 else None
    payload = read_exact(sock, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def websocket(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tty\r\n\r\n"
    ).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += read_exact(sock, 1)
    status = response.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        raise RuntimeError(f"no upgrade: {status!r}")
    return sock


def main():
    args = sys.argv[1:]
    readonly = args[:1] == ["--readonly"]
    if readonly:
        args = args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    port = free_port()
    argv = args + ["-p", str(port)] + (["-R"] if readonly else []) + ["cat"]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                head, body = http_get(port, "/token")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"ttyd did not listen: {log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.2)
        token = json.loads(body or b"{}").get("token", "")
        sock = websocket(port)
        send_frame(sock, json.dumps({"AuthToken": token, "columns": 80, "rows": 24}).encode())
        text = f"krnative-echo-{os.getpid()}"
        time.sleep(1)
        send_frame(sock, b"0" + text.encode() + b"\r")
        output = b""
        sock.settimeout(0.5)
        deadline = time.monotonic() + (5 if readonly else 30)
        while time.monotonic() < deadline and text.encode() not in output:
            try:
                opcode, payload = read_frame(sock)
            except socket.timeout:
                continue
            if opcode == 0x9:
                send_frame(sock, payload, opcode=0xA)
            elif opcode == 0x8:
                break
            elif payload[:1] == b"0":
                output += payload[1:]
        send_frame(sock, b"\x03\xe8", opcode=0x8)
        sock.close()
        print(json.dumps({"echoed": text.encode() in output, "output": output.decode(errors="replace"), "port": port}))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
