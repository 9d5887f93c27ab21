"""Compiling a wasm job's module to machine code, in a process of its own.

Cranelift's memory and time grow with the module, outside anything a store limits: one 4 MB function
took 500 MB and seconds, and a module may hold many, compiled on every core. In the node's process that
was memory and CPU no job paid for, and a compile no deadline could stop (a worker thread cannot be
cancelled). So the node runs this file as a child held to the job's own memory (RLIMIT_DATA), CPU time
and timeout, compiling on one thread, and loads the machine code it wrote.

Run as ``python -I wasm_compile.py MODULE OUT``: it imports wasmtime and nothing of the node. Exit 0:
``OUT`` holds the compiled module; 2: the module is not valid WebAssembly (the reason on stderr).
"""

from __future__ import annotations

import sys

import wasmtime

# Bumped when the engine configuration changes, so cached machine code of an older one is not reused.
CONFIG_VERSION = 1
INVALID_MODULE = 2  # exit code: the module is not valid WebAssembly


def engine_config(*, parallel: bool = True) -> wasmtime.Config:
    """The one engine configuration of wasm jobs (compiled code loads only into an engine configured alike)."""
    config = wasmtime.Config()
    config.epoch_interruption = True  # cancellation: the caller's deadline or a job cancel
    config.cranelift_nan_canonicalization = True
    config.wasm_threads = False
    config.wasm_relaxed_simd_deterministic = True
    config.parallel_compilation = parallel  # the child compiles on one core: a job's CPU is one core or more
    return config


def main(module: str, out: str) -> int:
    with open(module, "rb") as f:
        wasm = f.read()
    try:
        compiled = wasmtime.Module(wasmtime.Engine(engine_config(parallel=False)), wasm)
    except wasmtime.WasmtimeError as e:
        print(e, file=sys.stderr)
        return INVALID_MODULE
    with open(out, "wb") as f:
        f.write(compiled.serialize())
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
