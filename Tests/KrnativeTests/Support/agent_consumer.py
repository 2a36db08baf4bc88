#!/usr/bin/env python3
"""Does what the Backend.AI agent does with a krunner plugin wheel installed in this Python:
scan the `backendai_krunner_v10` entry points, call each plugin's `init`, read `versions.txt`
and `krunner-version.{distro}.txt` through importlib.resources, and extract
`krunner-env.{distro}.{arch}.tar.xz` with tarfile into `backendai-krunner.v{version}.{arch}.{distro}`
under DEST. Prints one JSON object describing what it found.

    agent_consumer.py DEST
"""
import asyncio
import importlib.metadata
import importlib.resources
import json
import os
import platform
import sys
import tarfile

dest = sys.argv[1]
found = []
for entry in importlib.metadata.entry_points(group="backendai_krunner_v10"):
    plugin = entry.load()
    asyncio.run(plugin.init({}))
    files = importlib.resources.files(f"ai.backend.krunner.{entry.name}")
    for distro in files.joinpath("versions.txt").read_text().split():
        version = int(files.joinpath(f"krunner-version.{distro}.txt").read_text().strip())
        arch = platform.machine()
        volume = os.path.join(dest, f"backendai-krunner.v{version}.{arch}.{distro}")
        with importlib.resources.as_file(files.joinpath(f"krunner-env.{distro}.{arch}.tar.xz")) as archive:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(volume)
        found.append({
            "entry": entry.name, "module": plugin.__name__, "distro": distro, "version": version,
            "python": files.joinpath(f"krunner-python.{distro}.txt").read_text().strip(), "volume": volume,
        })
print(json.dumps(found))
