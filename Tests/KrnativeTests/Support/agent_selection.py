"""Which krunner volume the Backend.AI agent selects for an image, by the agent's own code.

Usage: python agent_selection.py AGENT_DIR ARCH DISTRO...

AGENT_DIR is an unpacked `backend.ai-agent` wheel. Its `match_distro_data` (ai/backend/agent/kernel.py)
and `_get_krunner_info` with `LibcStyle` and `KernelRunnerInfo` (the version lookup, in
.../docker/mount/krunner.py) are taken from its files with `ast` and run as they are: the modules
themselves import half of Backend.AI, so only those definitions are compiled, with the other names
they use bound to what they mean (the error class the agent raises is matched by name). The installed plugins are found as the agent finds them: the `backendai_krunner_v10`
entry points and each package's `versions.txt` (`prepare_krunner_env`). Prints one JSON object: for
each DISTRO (an image's, as the agent names it: `alpine3.8`, `ubuntu20.04`) the key it selects and the
Python version it reads, or the error it raises.
"""

import ast
import enum
import importlib.metadata
import json
import pathlib
import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from typing import Final


def definition_source(path, name):
    """The source of the class or function `name` in `path` (a method of any class too), without decorators
    on functions (the agent caches `_get_krunner_info`; a class keeps `@dataclass`)."""
    for node in ast.walk(ast.parse(pathlib.Path(path).read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            if isinstance(node, ast.FunctionDef):
                node.decorator_list = []
            return ast.unparse(node)
    raise LookupError(f"{name} is not defined in {path}: the agent changed; read it again")


def constant(path, name):
    """The value a module assigns to `name` at its top level."""
    for node in ast.parse(pathlib.Path(path).read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.literal_eval(node.value)
    raise LookupError(f"{name} is not assigned in {path}")


def main():
    agent, arch, distros = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    kernel_py = agent / "ai/backend/agent/kernel.py"
    mount_py = agent / "ai/backend/agent/stage/kernel_lifecycle/docker/mount/krunner.py"

    class UnsupportedBaseDistroError(Exception):
        pass

    namespace = {"re": re, "Mapping": dict, "Any": object, "UnsupportedBaseDistroError": UnsupportedBaseDistroError}
    exec(compile("from __future__ import annotations\n" + definition_source(kernel_py, "match_distro_data"), str(kernel_py), "exec"), namespace)

    lookup = {
        "re": re, "enum": enum, "dataclass": dataclass, "Final": Final, "Path": pathlib.Path, "files": files, "Mapping": dict,
        "match_distro_data": namespace["match_distro_data"], "get_arch_name": lambda: arch,
        "FALLBACK_KERNEL_PYTHON_VERSION": constant(mount_py, "FALLBACK_KERNEL_PYTHON_VERSION"),
    }
    for name in ["LibcStyle", "KernelRunnerInfo", "_get_krunner_info"]:
        exec(compile("from __future__ import annotations\n" + definition_source(mount_py, name), str(mount_py), "exec"), lookup)
    get_krunner_info = lookup["_get_krunner_info"]

    # krunner_volumes as prepare_krunner_env makes it: every distro each plugin's versions.txt names.
    volumes = {}
    for entry in importlib.metadata.entry_points(group="backendai_krunner_v10"):
        for distro in (files(f"ai.backend.krunner.{entry.name}") / "versions.txt").read_text().splitlines():
            version = (files(f"ai.backend.krunner.{entry.name}") / f"krunner-version.{distro}.txt").read_text().strip()
            volumes[distro] = f"backendai-krunner.v{version}.{arch}.{distro}"

    result = {"krunner_volumes": volumes, "selected": {}}
    for distro in distros:
        try:
            info = get_krunner_info(None, distro, volumes)
            result["selected"][distro] = {
                "key": info.distro, "volume": info.krunner_volume, "python": info.krunner_py_version, "libc": str(info.libc_style),
            }
        except UnsupportedBaseDistroError as error:
            result["selected"][distro] = {"error": f"UnsupportedBaseDistroError({error})"}
    print(json.dumps(result, indent=2, sort_keys=True))


main()
