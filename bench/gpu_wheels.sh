#!/usr/bin/env bash
# Prepare, on a machine with network, the wheel folder that bench/gpu_check.py installs from on a
# GPU machine without network (Python 3.12, CUDA torch already installed there).
#
#     bash bench/gpu_wheels.sh [OUT_DIR]        # default: gpu_wheels/ in the repository (git-ignored)
#
# - deepspeed has no wheel on the index: one is built from its sdist with `pip wheel --no-deps`
#   (DS_BUILD_OPS=0: pure Python, ops are JIT-built on use; the trainer uses none of them);
# - megatron-core, lm-dataformat, zstandard and every dependency of these four are downloaded as
#   Python 3.12 manylinux x86_64 binary wheels, one round of `pip download --no-deps` per level of
#   the dependency tree (pip's own resolver would also fetch torch, which the GPU machine has);
# - torch, triton and nvidia-* are left out: the GPU machine's CUDA build of torch must stay.
# Both manylinux2014 and manylinux_2_28 tags are accepted: megatron-core only ships 2_28 wheels, and
# torch >= 2.6 (the GPU machine runs 2.11) needs glibc 2.28 itself.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$REPO/gpu_wheels}
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
# the same pins as pyproject.toml
TOP=("megatron-core==0.16.1" "lm-dataformat>=0.0.20" "zstandard>=0.22")
DEEPSPEED="deepspeed==0.19.8"
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)

mkdir -p "$OUT"
echo "gpu_wheels: building $DEEPSPEED (pure Python) into $OUT" >&2
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$OUT" "$DEEPSPEED"
ls "$OUT"/deepspeed-*-py3-none-any.whl >/dev/null || {
    echo "error: the deepspeed wheel in $OUT is not pure Python (py3-none-any)" >&2; exit 1; }

# requirements of the wheels in $OUT not yet satisfied by a wheel in $OUT (markers for CPython
# 3.12 on Linux x86_64), torch & co. excluded; prints one requirement per line
missing_requirements() {
    "$PY" - "$OUT" "$@" <<'EOF'
import glob, os, re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

out, extra = sys.argv[1], sys.argv[2:]
env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
skip = re.compile(r"^(torch|triton|nvidia-.*)$")
have, wanted = set(), {}
for path in glob.glob(os.path.join(out, "*.whl")):
    name = canonicalize_name(parse_wheel_filename(os.path.basename(path))[0])
    have.add(name)
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                extra.append(line.split(":", 1)[1].strip())
for text in extra:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    name = canonicalize_name(req.name)
    if name in have or skip.match(name):
        continue
    wanted.setdefault(name, []).append(str(req.specifier))
for name, specs in sorted(wanted.items()):
    print(name + ",".join(s for s in specs if s))
EOF
}

round=0
mapfile -t reqs < <(missing_requirements "${TOP[@]}")
while [ "${#reqs[@]}" -gt 0 ]; do
    round=$((round + 1))
    echo "gpu_wheels: round $round: ${reqs[*]}" >&2
    "$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$OUT" "${reqs[@]}"
    mapfile -t reqs < <(missing_requirements)
    [ "$round" -lt 20 ] || { echo "error: dependency rounds did not converge: ${reqs[*]}" >&2; exit 1; }
done
echo "gpu_wheels: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT" >&2
echo "gpu_wheels: carry $OUT to the GPU machine as gpu_wheels/ (or pass --wheels DIR to gpu_check.py)" >&2
