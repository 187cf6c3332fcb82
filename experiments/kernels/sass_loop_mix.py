#!/usr/bin/env python3
"""The instruction mix of a kernel's hot loops, read from its SASS on this machine (no GPU needed).

Compiles one kernels/ source for sm_90a with the flags of a CMake build (build/CMakeFiles/prime.dir),
prints ptxas's registers and spills for the kernels whose names match, and for each loop (a backward
branch) whose body holds an instruction matching --loop-with, the body's length and its opcodes by
count. kernels/README.md's per-iteration instruction counts come from here.

  python3 experiments/kernels/sass_loop_mix.py kernels/gka_solve/gka_forward_bf16_kernels.cu \
      --kernel 'bfloat16Li2E' --loop-with HGMMA

Needs nvdisasm, which the CUDA packages set-up installs do not hold: `pip download
nvidia-cuda-nvdisasm --no-deps -d /tmp/nvd && unzip -q -o /tmp/nvd/*.whl -d /tmp/nvd/x`, then
--nvdisasm /tmp/nvd/x/nvidia/cu13/bin/nvdisasm (or NVDISASM, or nvdisasm on PATH).
"""
import argparse
import collections
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile


def flag_value(flags_make, key):
    for line in open(flags_make):
        if line.startswith(key + ' ='):
            return line.split('=', 1)[1].strip()
    sys.exit(f'{flags_make}: no {key}')


def compile_cubin(build, source, cubin):
    target = os.path.join(build, 'CMakeFiles', 'prime.dir')
    flags_make = os.path.join(target, 'flags.make')
    defines = shlex.split(flag_value(flags_make, 'CUDA_DEFINES'))
    flags = [f for f in shlex.split(flag_value(flags_make, 'CUDA_FLAGS'))
             if not re.match(r'(--generate-code|-gencode|arch=)', f)]
    includes = os.path.abspath(os.path.join(target, 'includes_CUDA.rsp'))
    command = (['nvcc'] + defines + ['--options-file', includes] + flags +
               ['-arch=sm_90a', '-Xptxas', '-v', '-cubin', '-o', cubin, os.path.abspath(source)])
    run = subprocess.run(command, cwd=build, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(run.stderr[-4000:])
    return run.stderr


def ptxas_summary(log, pattern):
    name = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        elif name and re.search(pattern, name) and re.search(r'spill|registers', line):
            print(f'  {name[-70:]}: {line.replace("ptxas info    :", "").strip()}')


def loops(sass, pattern, loop_with):
    for function in re.split(r'\n(?=\.text\.)', sass):
        name = function.split(':', 1)[0]
        if not name.startswith('.text.') or not re.search(pattern, name):
            continue
        labels, code = {}, []
        for line in function.split('\n'):
            m = re.match(r'^(\.L_x_\d+):', line)
            if m:
                labels[m.group(1)] = len(code)
                continue
            m = re.match(r'\s+/\*[0-9a-f]+\*/\s+(.*?)\s*;', line)
            if m:
                code.append(m.group(1))
        for end, text in enumerate(code):
            m = re.search(r'BRA\s+`\((\.L_x_\d+)\)', text)
            if not m or labels.get(m.group(1), end) >= end:
                continue
            body = code[labels[m.group(1)]:end + 1]
            if not any(re.search(loop_with, b) for b in body):
                continue
            ops = collections.Counter(re.sub(r'^@!?U?P\w+\s+', '', b).split()[0].split('.')[0] for b in body)
            yield name[len('.text.'):], len(body), ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('source', help='a kernels/ .cu file')
    parser.add_argument('--kernel', default='.', help='regex on the mangled kernel names')
    parser.add_argument('--loop-with', default='HGMMA|HMMA', help='regex an instruction of the loop must match')
    parser.add_argument('--build', default='build', help='a configured CMake build folder')
    parser.add_argument('--nvdisasm', default=os.environ.get('NVDISASM') or shutil.which('nvdisasm'))
    args = parser.parse_args()
    if not args.nvdisasm:
        sys.exit('no nvdisasm: see --help')
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, 'kernels.cubin')
        ptxas_summary(compile_cubin(args.build, args.source, cubin), args.kernel)
        sass = subprocess.run([args.nvdisasm, '-c', cubin], capture_output=True, text=True, check=True).stdout
    for name, length, ops in loops(sass, args.kernel, args.loop_with):
        print(f'{name[-70:]}: loop of {length} instructions')
        print('   ' + ', '.join(f'{op} {n}' for op, n in ops.most_common(24)))


if __name__ == '__main__':
    main()
