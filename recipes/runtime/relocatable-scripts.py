import os, sys
root = sys.argv[1]
if os.path.islink(root):
    sys.exit(print(f'{root} is a link: not followed (the step boundary refuses it)'))
python = os.path.join(root, 'bin', 'python3.13')
for directory, names, files in os.walk(root):
    names.sort()
    for name in sorted(files):
        path = os.path.join(directory, name)
        if os.path.islink(path):
            continue
        with open(path, 'rb') as f:
            head = f.readline(512)
            rest = f.read()
        line = head.rstrip(b'\n')
        if not line.startswith(b'#!') or any(s in line for s in (b'bin/env', b'bin/sh', b'bin/bash')):
            continue
        if not line.startswith(b'#!/install/bin/python'):
            sys.exit(f'{path}: an interpreter line the recipe does not expect: {line!r}')
        relative = os.path.relpath(python, directory).encode()
        launcher = b"#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")/" + relative + b"\" \"$0\" \"$@\"\n' '''\n"
        with open(path, 'wb') as f:
            f.write(launcher + rest)
        print('relocatable:', os.path.relpath(path, root))
