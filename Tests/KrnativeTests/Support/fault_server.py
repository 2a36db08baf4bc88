#!/usr/bin/env python3
"""A loopback HTTP server for krnative's fetch tests, with faults on demand.

Serves files from --root. The first path component picks the behaviour:
  /files/NAME         the file; honours "Range: bytes=N-"
  /norange/NAME       the whole file with 200, whatever Range says
  /truncate/NAME      without Range: announces the full length, sends half, closes
  /stall/NAME         without Range: sends half, then goes silent for a minute
  /slow/NAME          honours Range, sends about 512 KiB/s
  /rate/KIB/NAME      honours Range, sends about KIB KiB/s
  /flaky/N/NAME       the first N requests answer 500, later ones serve the file
  /status/CODE/NAME   always answers CODE
  /wrong/NAME         the file with its last byte changed
  /junk/NAME          as many bytes as the file has, none of them an archive; honours Range
  /endless/NAME       the file, then zeros without end, with no Content-Length (closes when the client does)
  /huge/NAME          like endless, but announcing a Content-Length of 2 GiB
  /redirect/REST      302 to /REST on this server, or to the URL in the query "?to=URL"
Requests whose target is an absolute URL (a proxy request) are served by the path of that URL
and logged with "proxied": true. Every request is appended to --log as a JSON line:
{"path", "range", "status", "bytes", "proxied"}. The first stdout line is "PORT <n>".
Listens on 127.0.0.1 only.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

counts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, status, sent, proxied):
        entry = {"path": self.route, "range": self.headers.get("Range"), "status": status,
                 "bytes": sent, "proxied": proxied}
        with lock, open(self.server.log_path, "a") as log:
            log.write(json.dumps(entry) + "\n")

    def do_GET(self):
        proxied = self.path.startswith("http://")
        split = urlsplit(self.path)
        self.route = split.path
        parts = self.route.lstrip("/").split("/")
        mode, rest = parts[0], parts[1:]
        status, sent = 200, 0
        try:
            if mode == "redirect":
                status = 302
                target = parse_qs(split.query).get("to", ["/" + "/".join(rest)])[0]
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "status":
                status = int(rest[0])
                self.send_error(status)
                return
            rate = 512
            if mode == "rate":
                rate, rest, mode = int(rest[0]), rest[1:], "slow"
            if mode == "flaky":
                limit, rest = int(rest[0]), rest[1:]
                with lock:
                    counts[self.route] = counts.get(self.route, 0) + 1
                    seen = counts[self.route]
                if seen <= limit:
                    status = 500
                    self.send_error(500)
                    return
            path = os.path.join(self.server.root, *rest)
            if not rest or not os.path.isfile(path):
                status = 404
                self.send_error(404)
                return
            data = open(path, "rb").read()
            if mode == "wrong":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            if mode == "junk":
                data = (b"not an archive\n" * (len(data) // 15 + 1))[:len(data)]
            if mode in ("endless", "huge"):
                sent = self.endless(data, announce=mode == "huge")
                return
            start = 0
            wanted = self.headers.get("Range")
            if wanted and mode != "norange" and wanted.startswith("bytes=") and wanted.endswith("-"):
                start = int(wanted[len("bytes="):-1])
                if start >= len(data):
                    status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if mode in ("truncate", "stall") and not wanted:
                half = body[: len(body) // 2]
                self.wfile.write(half)
                self.wfile.flush()
                sent = len(half)
                if mode == "stall":
                    time.sleep(60)
                self.close_connection = True
                return
            if mode == "slow":
                step = 65536 if rate > 4096 else 16384
                for offset in range(0, len(body), step):
                    chunk = body[offset:offset + step]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                    time.sleep(step / (rate * 1024))
                return
            self.wfile.write(body)
            sent = len(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.record(status, sent, proxied)

    def endless(self, data, announce):
        """Sends data, then zeros up to 4 GiB; returns the bytes written before the client left."""
        self.send_response(200)
        if announce:
            self.send_header("Content-Length", str(2 << 30))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sent = 0
        step = 1 << 16
        zeros = bytes(step)
        try:
            while sent < (4 << 30):
                chunk = data[sent:sent + step] if sent < len(data) else zeros
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent


def main():
    # A parent may have spawned us with signals blocked; make SIGTERM work.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.root = args.root
    server.log_path = args.log
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
