"""The wasm executor against real wasmtime, with WASI modules written as WAT text (no C toolchain needed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import wasmtime

import executors.wasm as wasm_executor
from executors._common import CLOCK_STEP_NS, EPOCH_SECONDS
from executors.base import ExecutorError, LiveOutput, Mount, RunRequest
from executors.wasm import TRAP_EXIT_CODE, WasmExecutor
from jobs import JobSpec, OutputSpec, Resources, WasmEngine
from jobs.spec import SEEN_WHILE_RUNNING

# Helpers every test module shares: $write(fd, ptr, len), $hex(ptr, len) prints bytes as hex and a newline.
# Memory layout: 0-16 iovec/scratch, 64 hex digits, 128+ strings, 1024+ buffers, 4096+ hex output.
PRELUDE = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "0123456789abcdef")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $hex (param $ptr i32) (param $len i32) (local $i i32) (local $b i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $b (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
      (i32.store8 (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 64) (i32.shr_u (local.get $b) (i32.const 4)))))
      (i32.store8 (i32.add (i32.const 4097) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 64) (i32.and (local.get $b) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store8 (i32.add (i32.const 4096) (i32.shl (local.get $len) (i32.const 1))) (i32.const 10))
    (call $write (i32.const 1) (i32.const 4096) (i32.add (i32.shl (local.get $len) (i32.const 1)) (i32.const 1))))
"""


def module(body: str, imports: str = "") -> bytes:
    """``body`` holds the module's own items and its closing parenthesis."""
    return wasmtime.wat2wasm(f"(module {imports} {PRELUDE} {body}")


HELLO = module("""
  (data (i32.const 128) "hello from wasm\\n")
  (func (export "_start") (call $write (i32.const 1) (i32.const 128) (i32.const 16))))
""")

ARGS_AND_ENV = module(
    """
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 2048) (i32.const 1024)))
    (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 20)))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 2048) (i32.const 1024)))
    (call $write (i32.const 2) (i32.const 1024) (i32.load (i32.const 20)))))
""",
    """
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
""",
)

# Reads /inputs/x (preopen fd 3), writes it to /outputs/y (preopen fd 4) and to stdout, then checks that
# /inputs cannot be written: prints "inputs read-only" when opening x for writing fails.
COPY = module(
    """
  (data (i32.const 128) "x")
  (data (i32.const 136) "y")
  (data (i32.const 144) "inputs read-only\\n")
  (data (i32.const 176) "inputs WRITABLE\\n")
  (func (export "_start") (local $n i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 0)
                         (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $proc_exit (i32.const 10))))
    (i32.store (i32.const 24) (i32.const 1024))
    (i32.store (i32.const 28) (i32.const 1000))
    (drop (call $fd_read (i32.load (i32.const 16)) (i32.const 24) (i32.const 1) (i32.const 32)))
    (local.set $n (i32.load (i32.const 32)))
    (call $write (i32.const 1) (i32.const 1024) (local.get $n))
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 136) (i32.const 1) (i32.const 9)
                         (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $proc_exit (i32.const 11))))
    (call $write (i32.load (i32.const 16)) (i32.const 1024) (local.get $n))
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 8)
                         (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $write (i32.const 1) (i32.const 144) (i32.const 17)))
      (else (call $write (i32.const 1) (i32.const 176) (i32.const 16))))))
""",
    """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
""",
)

# Prints 16 random bytes, the wall clock, the monotonic clock, then sleeps 10 s (poll_oneoff on the
# monotonic clock) and prints the monotonic clock again.
ENTROPY = module(
    """
  (func (export "_start")
    (drop (call $random_get (i32.const 1024) (i32.const 16)))
    (call $hex (i32.const 1024) (i32.const 16))
    (drop (call $clock_time_get (i32.const 0) (i64.const 0) (i32.const 1024)))
    (call $hex (i32.const 1024) (i32.const 8))
    (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1024)))
    (call $hex (i32.const 1024) (i32.const 8))
    (i64.store (i32.const 2048) (i64.const 7))
    (i32.store8 (i32.const 2056) (i32.const 0))
    (i32.store (i32.const 2064) (i32.const 1))
    (i64.store (i32.const 2072) (i64.const 10000000000))
    (i64.store (i32.const 2080) (i64.const 0))
    (i32.store16 (i32.const 2088) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 2048) (i32.const 2112) (i32.const 1) (i32.const 2200)))
    (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1024)))
    (call $hex (i32.const 1024) (i32.const 8))))
""",
    """
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
""",
)

# Lists /inputs (preopen fd 3): one name per line, in the order fd_readdir gives them (the host's order).
LIST = module(
    """
  (data (i32.const 200) "\\n")
  (func (export "_start") (local $off i32) (local $end i32) (local $len i32)
    (drop (call $fd_readdir (i32.const 3) (i32.const 1024) (i32.const 3000) (i64.const 0) (i32.const 16)))
    (local.set $off (i32.const 1024))
    (local.set $end (i32.add (i32.const 1024) (i32.load (i32.const 16))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $off) (local.get $end)))
      (local.set $len (i32.load (i32.add (local.get $off) (i32.const 16))))
      (call $write (i32.const 1) (i32.add (local.get $off) (i32.const 24)) (local.get $len))
      (call $write (i32.const 1) (i32.const 200) (i32.const 1))
      (local.set $off (i32.add (local.get $off) (i32.add (i32.const 24) (local.get $len))))
      (br $next)))))
""",
    """
  (import "wasi_snapshot_preview1" "fd_readdir" (func $fd_readdir (param i32 i32 i32 i64 i32) (result i32)))
""",
)

# The WASI file functions the modules below import (an import a module does not call costs nothing).
FILES = """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_get" (func $fd_filestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_filestat_get"
    (func $path_filestat_get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir" (func $fd_readdir (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $path_unlink_file (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_remove_directory"
    (func $path_remove_directory (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $path_create_directory (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_rename" (func $path_rename (param i32 i32 i32 i32 i32 i32) (result i32)))
"""

# Makes files named f, b, e, a, d, c in /outputs, then prints as hex: the stat of /inputs (fd 3), the stat of
# /outputs/b, and /outputs' listing (wasi-libc's readdir: fd_readdir with room for all).
FILE_FACTS = module(
    """
  (data (i32.const 128) "fbeadc")
  (func (export "_start") (local $i i32)
    (block $made (loop $next
      (br_if $made (i32.ge_u (local.get $i) (i32.const 6)))
      (drop (call $path_open (i32.const 4) (i32.const 0) (i32.add (i32.const 128) (local.get $i)) (i32.const 1)
                             (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
      (drop (call $fd_close (i32.load (i32.const 16))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (drop (call $fd_filestat_get (i32.const 3) (i32.const 1024)))
    (call $hex (i32.const 1024) (i32.const 64))
    (drop (call $path_filestat_get (i32.const 4) (i32.const 0) (i32.const 129) (i32.const 1) (i32.const 1024)))
    (call $hex (i32.const 1024) (i32.const 64))
    (drop (call $fd_readdir (i32.const 4) (i32.const 1024) (i32.const 1000) (i64.const 0) (i32.const 16)))
    (call $hex (i32.const 1024) (i32.load (i32.const 16)))))
""",
    FILES,
)

# Calls stat and readdir as a hostile module would, and prints the errno of each (4 bytes each, as hex).
FILE_FACTS_ABUSED = module(
    """
  (func (export "_start")
    (i32.store (i32.const 1024)  ;; a listing written past the end of memory
      (call $fd_readdir (i32.const 3) (i32.const 65530) (i32.const 1000) (i64.const 0) (i32.const 16)))
    (i32.store (i32.const 1028)  ;; a path of 4 GiB
      (call $path_filestat_get (i32.const 3) (i32.const 0) (i32.const 128) (i32.const -1) (i32.const 1100)))
    (i32.store (i32.const 1032)  ;; a path of 64 KiB, all in memory
      (call $path_filestat_get (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 65536) (i32.const 1100)))
    (i32.store (i32.const 1036)  ;; a cookie past the end: nothing more (bufused 0, at 1040)
      (call $fd_readdir (i32.const 3) (i32.const 2048) (i32.const 1000) (i64.const -1) (i32.const 1040)))
    (i32.store (i32.const 1044)  ;; stdout is no directory
      (call $fd_readdir (i32.const 1) (i32.const 2048) (i32.const 1000) (i64.const 0) (i32.const 16)))
    (i32.store (i32.const 1048) (call $fd_filestat_get (i32.const 99) (i32.const 1100)))  ;; no such file
    (i32.store (i32.const 1052)  ;; a stat written past the end of memory
      (call $fd_filestat_get (i32.const 3) (i32.const 65530)))
    (i32.store (i32.const 1056)  ;; a listing into no room at all: nothing, no error
      (call $fd_readdir (i32.const 3) (i32.const 2048) (i32.const 0) (i64.const 0) (i32.const 1060)))
    (i32.store (i32.const 1064)  ;; removing a path of 4 GiB
      (call $path_unlink_file (i32.const 4) (i32.const 128) (i32.const -1)))
    (i32.store (i32.const 1068)  ;; renaming onto a path past the end of memory
      (call $path_rename (i32.const 4) (i32.const 128) (i32.const 1) (i32.const 4) (i32.const 65535) (i32.const 9)))
    (i32.store (i32.const 1072)  ;; removing a folder named by two paths' worth of bytes
      (call $path_remove_directory (i32.const 4) (i32.const 0) (i32.const 65536)))
    (call $hex (i32.const 1024) (i32.const 52))))
""",
    FILES,
)

# Makes /outputs/a and prints its inode number, removes it, makes /outputs/b and prints its number; then opens
# /inputs, lists it, closes it and lists it again from the second entry: prints that call's errno.
FILE_FACTS_CHANGING = module(
    """
  (data (i32.const 128) "a")
  (data (i32.const 129) "b")
  (data (i32.const 130) ".")
  (func $make_and_stat (param $name i32)
    (drop (call $path_open (i32.const 4) (i32.const 0) (local.get $name) (i32.const 1) (i32.const 1)
                           (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
    (drop (call $fd_close (i32.load (i32.const 16))))
    (drop (call $path_filestat_get (i32.const 4) (i32.const 0) (local.get $name) (i32.const 1) (i32.const 1024)))
    (call $hex (i32.const 1032) (i32.const 8)))
  (func (export "_start")
    (call $make_and_stat (i32.const 128))
    (drop (call $path_unlink_file (i32.const 4) (i32.const 128) (i32.const 1)))
    (call $make_and_stat (i32.const 129))
    (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 130) (i32.const 1) (i32.const 2)
                           (i64.const 0x1FFFFFFF) (i64.const 0x1FFFFFFF) (i32.const 0) (i32.const 16)))
    (drop (call $fd_readdir (i32.load (i32.const 16)) (i32.const 2048) (i32.const 1000) (i64.const 0) (i32.const 20)))
    (drop (call $fd_close (i32.load (i32.const 16))))
    (i32.store (i32.const 1100)
      (call $fd_readdir (i32.load (i32.const 16)) (i32.const 2048) (i32.const 1000) (i64.const 1) (i32.const 20)))
    (call $hex (i32.const 1100) (i32.const 4))))
""",
    FILES,
)

EXIT_3 = module("""
  (data (i32.const 128) "failing\\n")
  (func (export "_start") (call $write (i32.const 2) (i32.const 128) (i32.const 8)) (call $proc_exit (i32.const 3))))
""")

TRAP = module("""
  (data (i32.const 128) "before the trap\\n")
  (func (export "_start") (call $write (i32.const 1) (i32.const 128) (i32.const 16)) unreachable))
""")

SPIN = module('(func (export "_start") (loop $forever (br $forever))))')
# what Rust's allocator prints when RLIMIT_DATA refuses it, written by the module itself, then spins
SPIN_SAYING_OUT_OF_MEMORY = module("""
  (data (i32.const 128) "memory allocation of 8 bytes failed\\n")
  (func (export "_start") (call $write (i32.const 2) (i32.const 128) (i32.const 36)) (loop $forever (br $forever))))
""")


# The numbers of files made after others went: (1) a file removed while open, stat'ed through its descriptor,
# then closed, and a file made after it; (2) a folder replaced by a rename of another folder, and a folder made
# after it. Then a folder A listed and removed, a folder B made, and B listed from cookie 2. ext4 gives a new
# file the host number of one just removed, tmpfs does not.
FILES_GONE = module(
    """
  (data (i32.const 128) "a")
  (data (i32.const 129) "b")
  (data (i32.const 130) "c")
  (data (i32.const 131) "d")
  (data (i32.const 132) "e")
  (data (i32.const 133) "A")
  (data (i32.const 134) "B")
  (data (i32.const 140) "A/x1")
  (data (i32.const 146) "A/x2")
  (data (i32.const 152) "B/y1")
  (data (i32.const 200) "\\n")
  (func $number_of (param $p i32)
    (drop (call $path_filestat_get (i32.const 4) (i32.const 0) (local.get $p) (i32.const 1) (i32.const 1024)))
    (call $hex (i32.const 1032) (i32.const 1)))
  (func $open (param $p i32) (param $len i32) (param $flags i32) (result i32)
    (drop (call $path_open (i32.const 4) (i32.const 0) (local.get $p) (local.get $len) (local.get $flags)
                           (i64.const 0x1FFFFFFF) (i64.const 0x1FFFFFFF) (i32.const 0) (i32.const 16)))
    (i32.load (i32.const 16)))
  (func $open_folder (param $p i32) (result i32)
    (drop (call $path_open (i32.const 4) (i32.const 0) (local.get $p) (i32.const 1) (i32.const 2)
                           (i64.const 0x4000) (i64.const 0) (i32.const 0) (i32.const 16)))
    (i32.load (i32.const 16)))
  (func $names_from_2 (param $fd i32) (local $at i32) (local $end i32) (local $len i32)
    (drop (call $fd_readdir (local.get $fd) (i32.const 2048) (i32.const 1000) (i64.const 2) (i32.const 20)))
    (local.set $at (i32.const 2048))
    (local.set $end (i32.add (i32.const 2048) (i32.load (i32.const 20))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
      (local.set $len (i32.load (i32.add (local.get $at) (i32.const 16))))
      (call $write (i32.const 1) (i32.add (local.get $at) (i32.const 24)) (local.get $len))
      (call $write (i32.const 1) (i32.const 200) (i32.const 1))
      (local.set $at (i32.add (local.get $at) (i32.add (i32.const 24) (local.get $len))))
      (br $next))))
  (func (export "_start") (local $fd i32)
    (local.set $fd (call $open (i32.const 128) (i32.const 1) (i32.const 1)))
    (drop (call $path_unlink_file (i32.const 4) (i32.const 128) (i32.const 1)))
    (drop (call $fd_filestat_get (local.get $fd) (i32.const 1024)))
    (call $hex (i32.const 1032) (i32.const 1))
    (drop (call $fd_close (local.get $fd)))
    (drop (call $fd_close (call $open (i32.const 129) (i32.const 1) (i32.const 1))))
    (call $number_of (i32.const 129))
    (drop (call $path_create_directory (i32.const 4) (i32.const 130) (i32.const 1)))
    (drop (call $path_create_directory (i32.const 4) (i32.const 131) (i32.const 1)))
    (call $number_of (i32.const 131))
    (drop (call $path_rename (i32.const 4) (i32.const 130) (i32.const 1) (i32.const 4) (i32.const 131) (i32.const 1)))
    (drop (call $path_create_directory (i32.const 4) (i32.const 132) (i32.const 1)))
    (call $number_of (i32.const 132))
    (drop (call $path_create_directory (i32.const 4) (i32.const 133) (i32.const 1)))
    (drop (call $fd_close (call $open (i32.const 140) (i32.const 4) (i32.const 1))))
    (drop (call $fd_close (call $open (i32.const 146) (i32.const 4) (i32.const 1))))
    (local.set $fd (call $open_folder (i32.const 133)))
    (call $names_from_2 (local.get $fd))
    (drop (call $fd_close (local.get $fd)))
    (drop (call $path_unlink_file (i32.const 4) (i32.const 140) (i32.const 4)))
    (drop (call $path_unlink_file (i32.const 4) (i32.const 146) (i32.const 4)))
    (drop (call $path_remove_directory (i32.const 4) (i32.const 133) (i32.const 1)))
    (drop (call $path_create_directory (i32.const 4) (i32.const 134) (i32.const 1)))
    (drop (call $fd_close (call $open (i32.const 152) (i32.const 4) (i32.const 1))))
    (call $names_from_2 (call $open_folder (i32.const 134)))))
""",
    FILES,
)

# A folder D holding a, listed from cookie 0 with room for one entry (the listing is kept); a removed and b made;
# prints b's number, then the kept entry a's number read from cookie 2.
KEPT_LISTING = module(
    """
  (data (i32.const 128) "D")
  (data (i32.const 140) "D/a")
  (data (i32.const 146) "D/b")
  (func $open (param $p i32) (param $len i32) (param $flags i32) (result i32)
    (drop (call $path_open (i32.const 4) (i32.const 0) (local.get $p) (local.get $len) (local.get $flags)
                           (i64.const 0x1FFFFFFF) (i64.const 0x1FFFFFFF) (i32.const 0) (i32.const 16)))
    (i32.load (i32.const 16)))
  (func (export "_start") (local $d i32)
    (drop (call $path_create_directory (i32.const 4) (i32.const 128) (i32.const 1)))
    (drop (call $fd_close (call $open (i32.const 140) (i32.const 3) (i32.const 1))))
    (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 2)
                           (i64.const 0x4000) (i64.const 0) (i32.const 0) (i32.const 16)))
    (local.set $d (i32.load (i32.const 16)))
    ;; list from cookie 0 with room for one entry: the listing is kept
    (drop (call $fd_readdir (local.get $d) (i32.const 2048) (i32.const 25) (i64.const 0) (i32.const 20)))
    (drop (call $path_unlink_file (i32.const 4) (i32.const 140) (i32.const 3)))
    (drop (call $fd_close (call $open (i32.const 146) (i32.const 3) (i32.const 1))))
    (drop (call $path_filestat_get (i32.const 4) (i32.const 0) (i32.const 146) (i32.const 3) (i32.const 1024)))
    (call $hex (i32.const 1032) (i32.const 1))          ;; D/b's number
    (drop (call $fd_readdir (local.get $d) (i32.const 2048) (i32.const 1000) (i64.const 2) (i32.const 20)))
    (call $hex (i32.const 2056) (i32.const 1))          ;; the kept entry "a": its number
    (call $write (i32.const 1) (i32.const 2072) (i32.const 1))
    (call $write (i32.const 1) (i32.const 2048) (i32.const 0))))
""",
    FILES,
)

# Makes /outputs/marker and prints "first run", then has the host allocate 3 MiB of clock subscriptions 50
# times; a run that finds the marker prints "second run" instead.
RUN_TWICE = module(
    """
  (data (i32.const 128) "marker")
  (data (i32.const 140) "first run\\n")
  (data (i32.const 160) "second run: saw the first run's file\\n")
  (func (export "_start") (local $i i32)
    (if (i32.eqz (call $path_filestat_get (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 6) (i32.const 1024)))
      (then (call $write (i32.const 1) (i32.const 160) (i32.const 37)) (return)))
    (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 6) (i32.const 1)
                           (i64.const 0x1FFFFFFF) (i64.const 0) (i32.const 0) (i32.const 16)))
    (call $write (i32.const 1) (i32.const 140) (i32.const 10))
    ;; 65536 clock subscriptions (3 MiB) at 1 MiB, over and over: the host's Python allocations
    (drop (memory.grow (i32.const 64)))
    (local.set $i (i32.const 0))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (i32.const 65536)))
      (i32.store8 (i32.add (i32.const 1048584) (i32.mul (local.get $i) (i32.const 48))) (i32.const 0))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (local.set $i (i32.const 0))
    (block $d2 (loop $l2
      (br_if $d2 (i32.ge_u (local.get $i) (i32.const 50)))
      (drop (call $poll_oneoff (i32.const 1048576) (i32.const 1048576) (i32.const 65536) (i32.const 20)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l2)))))
""",
    FILES + """
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
""",
)

# Opens the input folder 150 times, listing each descriptor once (one '.' each), and keeps them all open.
LISTED_OVER_AND_OVER = module(
    """
  (data (i32.const 128) ".")
  (data (i32.const 129) ".")
  (func (export "_start") (local $opened i32) (local $errno i32)
    (block $done (loop $more
      (br_if $done (i32.ge_u (local.get $opened) (i32.const 150)))
      (local.set $errno (call $path_open (i32.const 3) (i32.const 0) (i32.const 129) (i32.const 1) (i32.const 2)
                                         (i64.const 0x4000) (i64.const 0) (i32.const 0) (i32.const 16)))
      (br_if $done (local.get $errno))
      (local.set $errno (call $fd_readdir (i32.load (i32.const 16)) (i32.const 8192) (i32.const 64) (i64.const 0)
                                          (i32.const 20)))
      (br_if $done (local.get $errno))
      (call $write (i32.const 1) (i32.const 128) (i32.const 1))
      (local.set $opened (i32.add (local.get $opened) (i32.const 1)))
      (br $more)))))
""",
    FILES,
)

# Grows memory 1 MiB at a time until refused, then traps (as an allocator failing would).
GREEDY = module("""
  (func (export "_start")
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))
""")


def request(
    tmp_path: Path,
    wasm: bytes,
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    seed: bytes = b"seed-1",
    job_id: str = "job-1",
    memory: str = "64MiB",
    files: dict[str, str] | None = None,
) -> RunRequest:
    inputs = tmp_path / "inputs"
    inputs.mkdir(exist_ok=True)
    (inputs / "prog.wasm").write_bytes(wasm)
    for name, text in (files or {}).items():
        (inputs / name).write_text(text)
    work = tmp_path / f"work-{time.monotonic_ns()}"
    spec = JobSpec(
        engine=WasmEngine(module="/inputs/prog.wasm", args=args or []),
        env=env or {},
        outputs=[OutputSpec(name="out", path="/outputs")],
        resources=Resources(memory=memory),
    )
    return RunRequest(
        job_id=job_id,
        execution_id=f"{job_id}-ex",
        spec=spec,
        work_dir=work,
        outputs_dir=work / "outputs",
        inputs=(Mount(inputs, "/inputs"),),
        seed=seed,
    )


@pytest.fixture(params=["forked", "new interpreter"])
async def executor(request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery) -> WasmExecutor:
    """Runs start from the fork server a node keeps (``run_pool``), or, while it has none, in a new interpreter."""
    executor = WasmExecutor(cache_dir=tmp_path / "cache")
    if request.param == "forked":
        await nursery.start(executor.run_pool)
    return executor


async def test_hello_world(executor: WasmExecutor, tmp_path: Path) -> None:
    assert executor.is_installed()
    result = await executor.run(request(tmp_path, HELLO))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello from wasm\n", "")
    assert not result.stdout_truncated
    assert result.started_at is not None and result.finished_at is not None
    assert result.started_at <= result.finished_at


async def test_args_and_env(executor: WasmExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, ARGS_AND_ENV, args=["a b", "-x"], env={"GREETING": "hi"}))
    assert result.stdout == "/inputs/prog.wasm\0a b\0-x\0"
    assert result.stderr == "GREETING=hi\0"


async def test_reads_input_writes_output_and_inputs_are_read_only(executor: WasmExecutor, tmp_path: Path) -> None:
    req = request(tmp_path, COPY, files={"x": "input data\n"})
    result = await executor.run(req)
    assert result.exit_code == 0, result
    assert result.stdout == "input data\ninputs read-only\n"
    assert (req.outputs_dir / "out" / "y").read_text() == "input data\n"
    assert (tmp_path / "inputs" / "x").read_text() == "input data\n"


async def test_a_file_input_is_seen_at_its_path(executor: WasmExecutor, tmp_path: Path) -> None:
    data = tmp_path / "fetched-blob"
    data.write_text("single file\n")
    code = tmp_path / "code.wasm"
    code.write_bytes(COPY)
    req = request(tmp_path, COPY)
    req = replace(req, inputs=(Mount(code, "/inputs/prog.wasm"), Mount(data, "/inputs/x")))
    result = await executor.run(req)
    assert result.stdout == "single file\ninputs read-only\n"
    assert data.read_text() == "single file\n"


async def test_lists_an_input_directory(executor: WasmExecutor, tmp_path: Path) -> None:
    names = ["delta", "alpha", "echo", "charlie", "bravo", "foxtrot-" + "x" * 40]
    result = await executor.run(request(tmp_path, LIST, files={name: name for name in names}))
    listed = {n for n in result.stdout.splitlines() if n not in (".", "..")}
    assert listed == {*names, "prog.wasm"}


async def test_what_a_module_learns_of_its_files_is_the_same_on_every_node(executor: WasmExecutor,
                                                                         tmp_path: Path) -> None:
    """Host file times, inode numbers, link counts, directory sizes and listing order differ between nodes:
    a client printing them had honest nodes outvoted on a job that is judged exactly."""
    first = await executor.run(request(tmp_path, FILE_FACTS))
    (tmp_path / "inputs" / "more").mkdir()  # the input directory's host link count and size change
    os.utime(tmp_path / "inputs", (1, 1))
    elsewhere = await WasmExecutor(cache_dir=tmp_path / "other-cache").run(request(tmp_path, FILE_FACTS))
    assert first.exit_code == 0, first
    assert first.stdout == elsewhere.stdout

    stat_of_inputs, stat_of_b, listing = (bytes.fromhex(line) for line in first.stdout.splitlines())
    epoch = EPOCH_SECONDS * 10**9
    fields = ("dev", "ino", "filetype", "nlink", "size", "atim", "mtim", "ctim")
    inputs, b = (dict(zip(fields, struct.unpack("<QQB7xQQQQQ", stat), strict=True))
                 for stat in (stat_of_inputs, stat_of_b))
    assert inputs == {"dev": 1, "ino": 1, "filetype": 3, "nlink": 1, "size": 4096, "atim": epoch, "mtim": epoch,
                      "ctim": epoch}
    assert b == {**inputs, "ino": 2, "filetype": 4, "size": 0}
    entries, at = [], 0
    while at < len(listing):
        cookie, inode, length, _kind = struct.unpack_from("<QQIB3x", listing, at)
        entries.append((cookie, listing[at + 24 : at + 24 + length].decode(), inode))
        at += 24 + length
    assert [(cookie, name) for cookie, name, _ in entries] == list(enumerate([".", "..", *"abcdef"], start=1))
    assert dict((name, inode) for _, name, inode in entries)["b"] == 2  # the number its stat gave


async def test_a_removed_files_number_is_never_a_new_files_and_a_closed_listing_is_gone(
        executor: WasmExecutor, tmp_path: Path) -> None:
    """ext4 gives a new file the inode number of one just deleted, tmpfs never does: a file made after another was
    removed was "the same file" on some nodes only (Go's os.SameFile said so). And a listing read through a
    descriptor closed since answered from what was listed before."""
    result = await executor.run(request(tmp_path, FILE_FACTS_CHANGING))
    assert result.exit_code == 0, result
    a, b, errno = (int.from_bytes(bytes.fromhex(line), "little") for line in result.stdout.split())
    assert (a, b) == (1, 2)
    assert errno == 8  # EBADF


async def test_stat_and_listing_answer_a_hostile_module_with_errors(executor: WasmExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, FILE_FACTS_ABUSED))
    assert result.exit_code == 0, result
    errnos = struct.unpack("<13I", bytes.fromhex(result.stdout.strip()))
    efault, ebadf, enametoolong = 21, 8, 37
    assert errnos == (efault, efault, enametoolong, 0, 0, ebadf, ebadf, efault, 0, 0, efault, efault, enametoolong)


async def test_exit_code_and_stderr(executor: WasmExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, EXIT_3))
    assert (result.exit_code, result.stderr) == (3, "failing\n")


async def test_trap_is_a_failed_run_with_the_trap_in_stderr(executor: WasmExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, TRAP))
    assert result.exit_code == TRAP_EXIT_CODE
    assert result.stdout == "before the trap\n"
    assert "wasm trap" in result.stderr and "unreachable" in result.stderr


async def test_invalid_module_is_not_retried(executor: WasmExecutor, tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="not valid WebAssembly") as info:
        await executor.run(request(tmp_path, b"\0asm\x01\0\0\0garbage"))
    assert not info.value.retryable


async def test_missing_module_is_not_retried(executor: WasmExecutor, tmp_path: Path) -> None:
    req = request(tmp_path, HELLO)
    req = replace(req, spec=req.spec.model_copy(update={"engine": WasmEngine(module="/inputs/nope.wasm")}))
    with pytest.raises(ExecutorError, match="not among the job's inputs") as info:
        await executor.run(req)
    assert not info.value.retryable


async def test_memory_limit_is_enforced_and_reported(executor: WasmExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, GREEDY, memory="8MiB"))
    assert result.exit_code == TRAP_EXIT_CODE
    assert "memory limit" in result.stderr and "8 MiB" in result.stderr


# Runs one module in a fresh interpreter, as a node would (wasmtime runs in the node's process), and prints
# its exit code, stderr and the process's peak memory.
PEAK_SCRIPT = """
import json, resource, sys, trio
from pathlib import Path
from executors.base import ExecutorError, LiveOutput, Mount, RunRequest
from executors.wasm import WasmExecutor
from jobs import JobSpec, Resources, WasmEngine
work = Path(sys.argv[1])
spec = JobSpec(engine=WasmEngine(module="/in/prog.wasm"), resources=Resources(memory="64MiB"), timeout=60)
request = RunRequest("job", "ex", spec, work / "work", work / "outputs", (Mount(work / "in", "/in"),), seed=b"s")
try:
    result = trio.run(WasmExecutor(cache_dir=work / "cache").run, request)
    exit_code, stderr = result.exit_code, result.stderr
except ExecutorError as e:  # the job is refused
    exit_code, stderr = None, str(e) + (" (retryable)" if e.retryable else "")
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked parent (the test run, hundreds of MiB)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
# the largest of the node's children (compiling, running): it carries this process's over, 100 MiB or so
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"exit_code": exit_code, "stderr": stderr, "peak_mib": peak // 1024,
                  "children_peak_mib": children // 1024}))
"""
TOUCH_12_MEMORIES = "".join(
    f"(memory $m{i} 960)" for i in range(12)) + '(func (export "_start") (local $p i32)' + "".join(
    f"(local.set $p (i32.const 0)) (block $b{i} (loop $l{i} (i64.store $m{i} (local.get $p) (i64.const 1))"
    f" (local.set $p (i32.add (local.get $p) (i32.const 4096)))"
    f" (br_if $l{i} (i32.lt_u (local.get $p) (i32.const 62910000)))))" for i in range(12)) + "))"
HUGE_TABLE = """(table $t 50000000 funcref) (memory 1) (func $f) (elem declare func $f)
  (func (export "_start") (table.fill $t (i32.const 0) (ref.func $f) (i32.const 50000000))))"""
# Sixteen tables of as many elements as a 64 MiB job may have (a quarter of its memory together), all filled;
# and sixteen of 4,194,304 (its old limit, a sixteenth of its memory in elements of 8 bytes each: 512 MiB).
SIXTEEN_TABLES = """{tables} (memory 1) (func $f) (elem declare func $f) (func (export "_start") {fills}))"""
SIXTEEN_FULL_TABLES, SIXTEEN_TABLES_AT_THE_OLD_LIMIT = (SIXTEEN_TABLES.format(
    tables="".join(f"(table $t{i} {n} funcref)" for i in range(16)),
    fills="".join(f"(table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const {n}))" for i in range(16)))
    for n in (64 * 1024**2 // (4 * 16 * 8), 64 * 1024**2 // 16))
RANDOM_GIB = """(import "wasi_snapshot_preview1" "random_get" (func $r (param i32 i32) (result i32))) (memory 1)
  (func (export "_start") (drop (call $r (i32.const 0) (i32.const 1073741824)))))"""


@pytest.mark.parametrize(("body", "stderr"), [
    (TOUCH_12_MEMORIES, "the module needs more memory at start than the job's limit of 64 MiB"),
    (HUGE_TABLE, "table minimum size of 50000000 elements exceeds table limits"),
    (RANDOM_GIB, ""),  # random_get answers EFAULT, which the module ignores
    (SIXTEEN_FULL_TABLES, ""),
    (SIXTEEN_TABLES_AT_THE_OLD_LIMIT, "table minimum size of 4194304 elements exceeds table limits"),
], ids=["twelve 60 MiB memories", "a 50M-element table", "random_get of 1 GiB", "sixteen full tables",
        "sixteen tables of 4M elements"])
def test_a_64_mib_job_takes_no_more_of_the_nodes_memory_by_other_means(tmp_path: Path, body: str,
                                                                       stderr: str) -> None:
    """``resources.memory`` held each linear memory, but a module could declare twelve of them (849 MiB in
    the node), a table of 50 million functions (432 MiB), or sixteen tables of 4 million (569 MiB), or ask
    ``random_get`` for 1 GiB, which the node made before checking that it fit the module's one page
    (1,157 MiB): all of it in the node's process. Now neither the node nor the run's own process holds it."""
    outcome = run_in_a_fresh_node(tmp_path, wasmtime.wat2wasm(f"(module {body}"))
    assert stderr in outcome["stderr"] and (outcome["exit_code"] == 0) == (not stderr), outcome
    assert outcome["peak_mib"] < 300, outcome  # about 80 MiB for the interpreter, wasmtime and a small module
    assert outcome["children_peak_mib"] < 300, outcome


def run_in_a_fresh_node(tmp_path: Path, wasm: bytes) -> dict:
    """PEAK_SCRIPT's outcome for ``wasm``: exit code (None: refused), stderr (or why) and peak memory."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "prog.wasm").write_bytes(wasm)
    ran = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[2], check=False)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def one_big_function(operations: int) -> bytes:
    """A module of one function ``operations`` arithmetic steps long: compiling it takes about 1.2 KiB
    of memory and 6 µs a step (wasmtime caps a function's body at 7.6 MB, about 760,000 steps)."""
    step = "(local.set 0 (i64.add (local.get 0) (i64.mul (local.get 0) (i64.const 7))))"
    return wasmtime.wat2wasm(f'(module (func (param i64) (result i64) {step * operations} (local.get 0))'
                             f' (func (export "_start")))')


def test_compiling_a_module_takes_none_of_the_nodes_memory_beyond_the_jobs(tmp_path: Path) -> None:
    """One 3 MB function took 370 MiB to compile, in the node's own process, whatever the job's memory."""
    outcome = run_in_a_fresh_node(tmp_path, one_big_function(300_000))
    assert outcome["exit_code"] is None, outcome
    assert outcome["stderr"] == "compiling the module needs more than 256 MiB of memory (resources.memory) (retryable)"
    assert outcome["peak_mib"] < 200, outcome


async def test_compiling_a_module_ends_with_the_jobs_timeout(executor: WasmExecutor, tmp_path: Path) -> None:
    """Compiling was out of reach of every deadline: a worker thread cannot be cancelled."""
    slow = request(tmp_path, one_big_function(600_000), memory="2GiB")  # about 4 s of compiling on one core
    slow = replace(slow, spec=slow.spec.model_copy(update={"timeout": 1.0}))
    t0 = trio.current_time()
    with pytest.raises(ExecutorError, match="compiling the module took longer than the job's timeout of 1 s") as info:
        await executor.prepare(slow)
    assert trio.current_time() - t0 < 3
    # a node that compiled it before would run it at once: this node's speed, held against no one
    assert info.value.retryable
    assert not list(executor.cache_dir.glob("*")), "nothing of it is left in the cache"
async def test_deadline_interrupts_an_infinite_loop_promptly(executor: WasmExecutor, tmp_path: Path) -> None:
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.5):
            await executor.run(request(tmp_path, SPIN))
    # run() waits for its worker thread, so returning at all means the module stopped.
    assert trio.current_time() - t0 < 2.0


async def test_cancel_scope_stops_the_run(executor: WasmExecutor, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, request(tmp_path, SPIN))
        await trio.sleep(0.3)
        t0 = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 < 1.0


async def test_clocks_sleep_and_randomness_are_deterministic(executor: WasmExecutor, tmp_path: Path) -> None:
    first = await executor.run(request(tmp_path, ENTROPY))
    again = await executor.run(request(tmp_path, ENTROPY))
    elsewhere = await WasmExecutor(cache_dir=tmp_path / "other-cache").run(request(tmp_path, ENTROPY))
    other_seed = await executor.run(request(tmp_path, ENTROPY, seed=b"seed-2"))
    assert first.exit_code == 0, first
    assert first.stdout == again.stdout == elsewhere.stdout
    assert other_seed.stdout != first.stdout

    rand, wall, mono, after_sleep = first.stdout.splitlines()
    assert len(bytes.fromhex(rand)) == 16
    assert rand != other_seed.stdout.splitlines()[0]
    wall_ns, mono_ns, after_ns = (int.from_bytes(bytes.fromhex(h), "little") for h in (wall, mono, after_sleep))
    assert wall_ns == EPOCH_SECONDS * 10**9 + CLOCK_STEP_NS  # a fixed instant, whatever the host clock says
    assert after_ns - mono_ns >= 10 * 10**9  # the 10 s sleep moved the virtual clock, not the real one


async def test_without_a_seed_the_job_id_decides(executor: WasmExecutor, tmp_path: Path) -> None:
    a = await executor.run(request(tmp_path, ENTROPY, seed=b"", job_id="job-a"))
    a2 = await executor.run(request(tmp_path, ENTROPY, seed=b"", job_id="job-a"))
    b = await executor.run(request(tmp_path, ENTROPY, seed=b"", job_id="job-b"))
    assert a.stdout == a2.stdout != b.stdout


async def test_compiled_modules_are_cached_by_content(executor: WasmExecutor, tmp_path: Path) -> None:
    await executor.prepare(request(tmp_path, HELLO))  # compiles before the job's run
    cached = list(executor.cache_dir.glob("*.cwasm"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_ino  # compiling again writes a new file in its place
    result = await WasmExecutor(cache_dir=executor.cache_dir).run(request(tmp_path, HELLO))
    assert result.stdout == "hello from wasm\n"
    assert list(executor.cache_dir.glob("*.cwasm")) == cached and cached[0].stat().st_ino == stamp
    cached[0].write_bytes(b"corrupt")  # a damaged cache entry is recompiled, not fatal
    assert (await executor.run(request(tmp_path, HELLO))).stdout == "hello from wasm\n"


async def test_the_cache_of_compiled_modules_keeps_the_latest_used_within_its_size(
        executor: WasmExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job may bring a module of its own, and each compiled module stayed on the node's disk for good."""
    import executors.wasm as wasm

    for name in "ab":
        (tmp_path / name).mkdir()
    await executor.run(request(tmp_path / "a", HELLO))
    (used,) = executor.cache_dir.glob("*.cwasm")
    for age in range(3):  # modules compiled an hour or more ago
        old = executor.cache_dir / f"old-{age}.cwasm"
        old.write_bytes(b"\0" * 1_000_000)
        os.utime(old, (time.time() - 3600 * (age + 1),) * 2)
    os.utime(used, (time.time() - 9000,) * 2)  # compiled before two of them
    left_by_a_killed_node = executor.cache_dir / "abc.tmp"
    left_by_a_killed_node.write_bytes(b"\0" * 1000)
    os.utime(left_by_a_killed_node, (time.time() - 7200,) * 2)
    monkeypatch.setattr(wasm, "CACHE_BYTES", 1_500_000)
    await executor.run(request(tmp_path / "a", HELLO))  # used again: now the latest
    await executor.run(request(tmp_path / "b", ENTROPY))  # compiled: the cache is trimmed
    left = {p.name for p in executor.cache_dir.glob("*.cwasm")}
    assert len(left) == 3 and {used.name, "old-0.cwasm"} < left  # the two least recently used went
    assert not left_by_a_killed_node.exists()
    assert sum(p.stat().st_size for p in executor.cache_dir.glob("*.cwasm")) <= 1_500_000


HELD_OPEN = module("""
  (data (i32.const 128) "f")
  (func (export "_start") (local $fd i32) (local $i i32)
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 1)
                         (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $proc_exit (i32.const 11))))
    (local.set $fd (i32.load (i32.const 16)))
    (if (call $path_unlink_file (i32.const 4) (i32.const 128) (i32.const 1)) (then (call $proc_exit (i32.const 12))))
    (i32.store (i32.const 0) (i32.const 32768))
    (i32.store (i32.const 4) (i32.const 32768))
    (loop $more
      (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 1280))))
    (loop $forever (br $forever))))
""", """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $path_unlink_file (param i32 i32 i32) (result i32)))
""")


async def test_a_file_the_module_deleted_but_holds_open_counts_against_its_disk(executor: WasmExecutor,
                                                                                tmp_path: Path) -> None:
    """No walk of the outputs finds a file deleted while open: a 10 MiB job wrote 3 GiB so, and one that then
    exited completed. Here 40 MiB written so end the run, as any 40 MiB would."""
    req = request(tmp_path, HELD_OPEN)
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="64MiB", disk="10MiB"),
                                                        "timeout": 600}))
    with trio.fail_after(60):  # it would spin for its ten minutes
        failure = await disk_failure(executor, req)
    assert failure == "disk limit exceeded: wrote more than 10485760 bytes (resources.disk, less the staged inputs)" \
        f"{SEEN_WHILE_RUNNING}"  # stopped while it spun
    assert not list((req.outputs_dir / "out").iterdir())


async def disk_failure(executor: WasmExecutor, req: RunRequest) -> str:
    """How a run past its disk limit failed: the line of its result (its output dropped, exit 1), when the module
    ended before the disk watch stopped it, else the error that says the watch stopped it while it ran (never
    held against the node: another node's watch may have missed a passing overshoot)."""
    try:
        result = await executor.run(req)
    except ExecutorError as e:
        assert not e.retryable and str(e).endswith(SEEN_WHILE_RUNNING), e
        return str(e)
    assert (result.exit_code, result.stdout) == (1, ""), result
    return result.stderr.removesuffix("\n")


OPEN_AND_EXIT = module("""
  (data (i32.const 128) "f")
  (func (export "_start")
    (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 1)
                           (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
    (call $proc_exit (i32.const 3))))
""", """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
""")


def _open_under(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(f"{path}/work-"):
                found.append(target)
    return found


async def test_a_modules_open_files_close_when_its_run_ends(executor: WasmExecutor, tmp_path: Path) -> None:
    """The store and wasmtime's frames held each other: the files a module left open (and the space of those it
    deleted) outlived its run until the cycle collector came by, minutes later."""
    result = await executor.run(request(tmp_path, OPEN_AND_EXIT))
    assert result.exit_code == 3 and _open_under(tmp_path) == []
    req = request(tmp_path, HELD_OPEN)  # cancelled while it holds a deleted file
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="64MiB", disk="1GiB")}))
    with trio.move_on_after(2):
        await executor.run(req)
    assert _open_under(tmp_path) == []


# Writes random_get's answers to 16, 1 MiB and 1 MiB + 16 bytes, one after the other, to /outputs/r.
RANDOM_TO_FILE = module("""
  (data (i32.const 128) "r")
  (func $random (param $fd i32) (param $len i32)
    (drop (call $random_get (i32.const 65536) (local.get $len)))
    (call $write (local.get $fd) (i32.const 65536) (local.get $len)))
  (func (export "_start") (local $fd i32)
    (drop (memory.grow (i32.const 40)))
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 1)
                         (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $proc_exit (i32.const 11))))
    (local.set $fd (i32.load (i32.const 16)))
    (call $random (local.get $fd) (i32.const 16))
    (call $random (local.get $fd) (i32.const 1048576))
    (call $random (local.get $fd) (i32.const 1048592))))
""", """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
""")


async def test_random_get_answers_are_the_streams_every_node_makes(executor: WasmExecutor, tmp_path: Path) -> None:
    """Nodes compare the results of deterministic jobs: each call is the stream it always was, its shake_256 of
    the key and its number, however long (the node makes a larger one a MiB at a time)."""
    key = hashlib.sha256(b"wasm random_get:" + hashlib.sha256(b"shoal-seed:seed-1").digest()).digest()

    def stream(*parts: int, length: int) -> bytes:
        return hashlib.shake_256(key + b"".join(p.to_bytes(8, "little") for p in parts)).digest(length)

    req = request(tmp_path, RANDOM_TO_FILE)
    result = await executor.run(req)
    assert result.exit_code == 0, result
    got = (req.outputs_dir / "out" / "r").read_bytes()
    mib = 1024**2
    assert got == stream(1, length=16) + stream(2, length=mib) + stream(3, length=mib + 16)


def _memory_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


# Fills its 1 GiB of memory, then asks random_get for all of it again and again.
RANDOM_FOREVER = wasmtime.wat2wasm("""(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 16384)
  (func (export "_start")
    (memory.fill (i32.const 0) (i32.const 1) (i32.const 0x40000000))
    (loop $again (drop (call $random_get (i32.const 0) (i32.const 0x40000000))) (br $again))))""")


async def test_a_huge_random_get_ends_with_the_timeout_and_takes_none_of_the_nodes_memory(
        executor: WasmExecutor, tmp_path: Path) -> None:
    """random_get made all it was asked in one piece, in the node's process and holding its GIL: 2 GiB asked
    three times froze the node (its API, its peers) for 55 s, took 7 GiB of its memory, and ran 80 s past a
    5 s timeout, which could only stop the module once a call returned."""
    req = request(tmp_path, RANDOM_FOREVER, memory="1GiB")
    await executor.prepare(req)  # compiled beforehand: the timeout is the run's
    lag = 0.0

    async def watch_the_loop() -> None:
        nonlocal lag
        while True:
            t = trio.current_time()
            await trio.sleep(0.01)
            lag = max(lag, trio.current_time() - t - 0.01)

    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = _memory_status("VmHWM")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_the_loop)
        t0 = trio.current_time()
        with trio.move_on_after(1):
            await executor.run(req)
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    grew = _memory_status("VmHWM") - before
    # (before: 4.1 s and a 2.6 s stall, and far more under load; the margins are for a loaded CI machine)
    assert took < 3.0, f"ran {took:.1f} s with a timeout of 1 s"
    assert lag < 1.0, f"the node's event loop stood still for {lag:.1f} s"
    # the module's own GiB, and not another GiB or two of random bytes made for it in the node
    assert grew < 1024**3 + 256 * 1024**2, f"the node's memory grew by {grew / 1024**2:.0f} MiB"


# Exits with poll_oneoff's errno for 65,537 sleeps of 0 ns (zeroed subscriptions) at once.
POLL_MANY = module("""
  (func (export "_start")
    (drop (memory.grow (i32.const 100)))
    (call $proc_exit (call $poll_oneoff (i32.const 65536) (i32.const 3276800) (i32.const 65537) (i32.const 16)))))
""", """
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
""")


async def test_poll_oneoff_refuses_more_subscriptions_than_it_takes(executor: WasmExecutor, tmp_path: Path) -> None:
    """The node read and went through every subscription asked, in its own process: 44 million of them (2 GiB)
    took it a minute and 12 GiB. Beyond 65,536 a call is refused (EINVAL, 28) before any is read."""
    result = await executor.run(request(tmp_path, POLL_MANY))
    assert result.exit_code == 28, result


# Opens its own module again and again, never closing one, until it may open no more; says "full", and holds them.
OPEN_WITHOUT_END = module("""
  (data (i32.const 128) "prog.wasm")
  (data (i32.const 160) "full\\n")
  (func (export "_start")
    (block $full (loop $more
      (br_if $full (call $path_open (i32.const 3) (i32.const 0) (i32.const 128) (i32.const 9) (i32.const 0)
                                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
      (br $more)))
    (call $write (i32.const 1) (i32.const 160) (i32.const 5))
    (loop $hold (br $hold))))
""", """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
""")


async def test_a_module_opening_files_without_end_takes_none_of_the_nodes_descriptors(
        executor: WasmExecutor, tmp_path: Path) -> None:
    """Each file a module opened was a descriptor of the node's own process: a 6 MiB job took all 20,000, and
    every other job, the node's API, peers and store failed with EMFILE for as long as it ran."""
    (tmp_path / "hog").mkdir()
    (tmp_path / "other").mkdir()
    hog = replace(request(tmp_path / "hog", OPEN_WITHOUT_END), live=LiveOutput())
    before = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, hog)
        with trio.fail_after(60):
            while b"full" not in hog.live.take("stdout")[1]:
                await trio.sleep(0.1)
        held = len(os.listdir("/proc/self/fd")) - before
        other = await executor.run(request(tmp_path / "other", HELLO))  # another user's job, meanwhile
        nursery.cancel_scope.cancel()
    assert held < 50, f"the node held {held} more descriptors while the module held its files"
    assert (other.exit_code, other.stdout) == (0, "hello from wasm\n")


async def test_a_node_that_may_not_run_its_interpreter_offers_no_wasm_and_keeps_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run is a process of the node's interpreter. A node running as a user who may not execute it (a venv
    whose python lies under /root) crashed as its fork server failed to start: it now says why, offers no wasm
    and refuses a run, retryably."""
    denied = tmp_path / "python"
    denied.write_text("")  # not executable
    monkeypatch.setattr(sys, "executable", str(denied))
    executor = WasmExecutor(cache_dir=tmp_path / "cache")
    assert not executor.is_installed()
    assert executor.problem() == f"this node's user may not run its own interpreter {denied} (a run's process)"
    with trio.fail_after(5):
        await executor.run_pool()  # returns, not raises: the node goes on
    with pytest.raises(ExecutorError, match="cannot run wasm jobs") as refused:
        await executor.run(request(tmp_path, HELLO))
    assert refused.value.retryable


async def test_a_run_whose_fork_server_ended_is_the_nodes_failure_and_runs_again(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """A run forked by the fork server ends with it (PR_SET_PDEATHSIG). It came out as the job's failure, exit 134
    with no outcome, and a deterministic job is not run again after one: it is the node's, and retryable."""
    executor = WasmExecutor(cache_dir=tmp_path / "cache")
    await nursery.start(executor.run_pool)
    server = executor._forker
    assert server is not None

    async def end_the_server_once_running() -> None:
        while not any(_is_run_forked_by(pid, server.pid) for pid in _pids()):
            await trio.sleep(0.05)
        server.kill()

    nursery.start_soon(end_the_server_once_running)
    with trio.fail_after(30), pytest.raises(ExecutorError, match="fork server ended during the run") as ended:
        await executor.run(request(tmp_path, SPIN))
    assert ended.value.retryable


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _is_run_forked_by(pid: int, server: int | None) -> bool:
    """Whether ``pid``'s parent is ``server`` (field 4 of /proc/PID/stat)."""
    with contextlib.suppress(OSError, ValueError):
        return pid != server and int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == server
    return False


async def test_a_trap_naming_a_huge_function_takes_none_of_the_nodes_memory(
        executor: WasmExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trap's backtrace names each frame's function: a module overflowing its stack in a function with a
    2 MB name made a 40 MB outcome, read, copied and parsed in the node (a 10 MB name: 913 MiB, 0.7 s of
    the event loop). The run's own process cuts the trap short, and the node reads at most 64 KiB of it."""
    name = "f" * 2_000_000
    wasm = wasmtime.wat2wasm(f'(module (func ${name} (param i32) (call ${name} (local.get 0)))'
                             f' (func (export "_start") (call ${name} (i32.const 0))))')
    received: list[int] = []
    told = wasm_executor._told
    monkeypatch.setattr(wasm_executor, "_told", lambda said: received.append(len(said)) or told(said))
    result = await executor.run(request(tmp_path, wasm))
    assert result.exit_code == TRAP_EXIT_CODE and "call stack exhausted" in result.stderr, result.stderr[:500]
    assert received and received[0] < 20_000, received
    assert len(result.stderr) < 20_000


async def test_a_sleep_past_the_end_of_time_is_the_modules_trap_not_the_nodes_error(
        executor: WasmExecutor, tmp_path: Path) -> None:
    """A relative sleep of 2**64 - 1 ns pushed the virtual clock past what a WASI timestamp holds: the next
    clock read failed inside the host function, and the run ended with no outcome, blamed on CPU or memory
    (and, without the fork server, a host traceback with the node's paths in the job's stderr)."""
    wasm = module("""
      (func (export "_start")
        (i64.store (i32.const 2048) (i64.const 7)) (i32.store8 (i32.const 2056) (i32.const 0))
        (i32.store (i32.const 2064) (i32.const 1)) (i64.store (i32.const 2072) (i64.const -1))
        (i64.store (i32.const 2080) (i64.const 0)) (i32.store16 (i32.const 2088) (i32.const 0))
        (drop (call $poll_oneoff (i32.const 2048) (i32.const 2112) (i32.const 1) (i32.const 2200)))
        (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1024)))
        (call $hex (i32.const 1024) (i32.const 8))))
    """, """
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
    """)
    result = await executor.run(request(tmp_path, wasm))
    end = (2**64 - 1 - EPOCH_SECONDS * 1_000_000_000).to_bytes(8, "little").hex()  # where the clocks stop
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"{end}\n", "")


async def test_one_file_written_past_the_disk_limit_stops_the_run_at_the_limit(
        executor: WasmExecutor, tmp_path: Path) -> None:
    """The disk watch looks every 0.1 s: a module writing one file fast had 48 MiB on disk for a 10 MiB
    limit when it was stopped. One file now ends the run as it passes the limit (RLIMIT_FSIZE)."""
    wasm = module("""
      (data (i32.const 128) "big")
      (func (export "_start")
        (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 3) (i32.const 9)
                             (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
          (then (call $proc_exit (i32.const 10))))
        (i32.store (i32.const 24) (i32.const 0)) (i32.store (i32.const 28) (i32.const 65536))
        (loop $more
          (br_if $more (i32.eqz (call $fd_write (i32.load (i32.const 16)) (i32.const 24) (i32.const 1)
                                                (i32.const 32)))))
        (call $proc_exit (i32.const 3))))
    """, """
      (import "wasi_snapshot_preview1" "path_open"
        (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
    """)
    base = request(tmp_path, wasm)
    small = replace(base, spec=base.spec.model_copy(update={"resources": Resources(memory="64MiB", disk="10MiB")}))
    failure = await disk_failure(executor, small)
    assert failure.startswith(f"disk limit exceeded: wrote more than {small.write_limit} bytes"), failure
    assert (small.outputs_dir / "out" / "big").stat().st_size <= small.write_limit + 1


def test_a_compile_ends_with_its_node(tmp_path: Path) -> None:
    """The compiler was started without a tie to the node: after a kill -9 of the node it compiled on, for
    up to the job's timeout, into the node's cache, unknown to the node that started next."""
    (tmp_path / "in").mkdir()
    step = "(local.set 0 (i64.add (local.get 0) (i64.mul (local.get 0) (i64.const 7))))"
    slow = "(func (param i64) (result i64) " + step * 200_000 + " (local.get 0))"  # about 1.2 s each
    (tmp_path / "in" / "prog.wasm").write_bytes(wasmtime.wat2wasm(f'(module {slow * 20} (func (export "_start")))'))
    script = PEAK_SCRIPT.replace('memory="64MiB"), timeout=60', 'memory="2GiB"), timeout=600')
    node = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (compilers := _compilers(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert compilers, "the compiler never started"
    finally:
        node.kill()
        node.wait()
    try:
        deadline = time.monotonic() + 5
        while _compilers(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _compilers(tmp_path)
    finally:
        for pid in _compilers(tmp_path):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


def _compilers(under: Path) -> list[int]:
    """The wasm compilers at work on a module under ``under``."""
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"compile" in argv and any(str(under).encode() in arg for arg in argv):
                found.append(pid)
    return found


async def test_a_damaged_compiled_module_is_compiled_again_for_a_job_with_a_file_input(
        executor: WasmExecutor, tmp_path: Path) -> None:
    """A compiled module that could not be loaded (a torn write, or trimmed from the cache as the run began)
    is compiled again and the run retried: a file input's link, made for the first try, failed the second
    ("executor crashed: SameFileError")."""
    data = tmp_path / "fetched-blob"
    data.write_text("single file\n")
    code = tmp_path / "code.wasm"
    code.write_bytes(COPY)
    req = replace(request(tmp_path, COPY), inputs=(Mount(code, "/inputs/prog.wasm"), Mount(data, "/inputs/x")))
    await executor.prepare(req)
    (compiled,) = executor.cache_dir.glob("*.cwasm")
    compiled.write_bytes(b"not machine code")
    result = await executor.run(req)
    assert result.stdout == "single file\ninputs read-only\n", result.stderr


# What the modules making folders and files import.
MAKING = """
(import "wasi_snapshot_preview1" "path_create_directory" (func $path_create_directory (param i32 i32 i32) (result i32)))
(import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
(import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
"""


def entries_module(count: int, *, folders: bool, name_length: int = 4) -> bytes:
    """A module making ``count`` empty folders in /outputs, or files in the folder /outputs/d, named 0000, 0001,
    ... (padded with x to ``name_length``), then saying "made"."""
    make = ("(call $path_create_directory (i32.const 4) (i32.const 128) (i32.const {n}))" if folders else
            "(call $path_open (i32.const 4) (i32.const 0) (i32.const 126) (i32.const {n}) (i32.const 1)"
            " (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))").format(n=name_length + (not folders) * 2)
    close = "" if folders else "(drop (call $fd_close (i32.load (i32.const 16))))"
    folder = "" if folders else "(drop (call $path_create_directory (i32.const 4) (i32.const 126) (i32.const 1)))"
    return module(f"""
      (data (i32.const 126) "d/")
      (data (i32.const 132) "{'x' * (name_length - 4)}")
      (data (i32.const 1024) "made\\n")
      (func $digit (param $at i32) (param $n i32) (param $unit i32)
        (i32.store8 (local.get $at)
          (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $n) (local.get $unit)) (i32.const 10)))))
      (func (export "_start") (local $i i32)
        {folder}
        (loop $more
          (call $digit (i32.const 128) (local.get $i) (i32.const 1000))
          (call $digit (i32.const 129) (local.get $i) (i32.const 100))
          (call $digit (i32.const 130) (local.get $i) (i32.const 10))
          (call $digit (i32.const 131) (local.get $i) (i32.const 1))
          (if {make} (then (call $proc_exit (i32.const 9))))
          {close}
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $more (i32.lt_u (local.get $i) (i32.const {count}))))
        (call $write (i32.const 1) (i32.const 1024) (i32.const 5))))
    """, MAKING)


MADE = (0, "made\n", "")


@pytest.mark.parametrize(("wasm", "disk", "everywhere"), [
    # 1,500 folders, a block each by the network's measure: past 2 MiB on every node
    (entries_module(1500, folders=True), "2MiB", None),
    # 2,000 empty files, 512 bytes each by the network's measure, and their folder a block; their long names grow
    # the folder to 600 KiB on ext4 (past 1.25 MiB in all: refused there), 40 KB on tmpfs
    (entries_module(2000, folders=False, name_length=200), "1280KiB", MADE),
    (entries_module(100, folders=True), "1MiB", MADE),
], ids=["folders past the limit", "long names within it", "folders within it"])
async def test_what_a_job_writes_counts_against_its_disk_alike_on_every_file_system(
        executor: WasmExecutor, tmp_path: Path, wasm: bytes, disk: str, everywhere: tuple | None) -> None:
    """A folder takes 4 KiB of ext4 and less of tmpfs. Counted by the blocks they took, 1,500 empty folders under
    a 2 MiB limit failed on an ext4 node and completed on a tmpfs one, and how far a run got when the disk watch
    stopped it was in its result: a client could get the nodes of one file system outvoted by the others', job
    after job, and quarantined. A job's outcome now hangs on the network's measure alone, the same on every
    node; a node whose own file system took more than the limit refuses the run retryably (it counts against no
    one, and another node may hold it)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) here")
    outcomes = []
    with tempfile_in(shm) as fast:
        for root in (tmp_path / "disk", fast / "memory", fast / "memory-again"):
            root.mkdir()
            req = request(root, wasm)
            req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="64MiB", disk=disk)}))
            try:
                result = await executor.run(req)
            except ExecutorError as e:
                if e.retryable:  # this node's own file system took more than the limit
                    assert "disk limit exceeded on this node" in str(e), e
                else:  # stopped while it ran: an error, never a result compared with others' (nor held against it)
                    assert everywhere is None and str(e).endswith(SEEN_WHILE_RUNNING), e
                continue
            outcomes.append((result.exit_code, result.stdout, result.stderr))
    assert len(set(outcomes)) <= 1, outcomes  # whatever result there is, it is the same on every node
    if everywhere is not None:
        assert len(outcomes) >= 2 and outcomes[0] == everywhere, outcomes  # tmpfs takes no more than the measure
    elif outcomes:  # the module ended before the watch looked: its output dropped, as how far it got would vary
        code, out, err = outcomes[0]
        assert (code, out) == (1, "") and err.startswith("disk limit exceeded: wrote more than "), outcomes


@contextlib.contextmanager
def tempfile_in(parent: Path):
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="shoal-test-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def nested_module(depth: int, name_length: int = 200) -> bytes:
    """A module nesting ``depth`` folders of ``name_length`` characters in /outputs, each made and opened
    from the one above (as WASI does: no path is ever longer than one name), then saying "made"."""
    return module(f"""
      (data (i32.const 128) "{'n' * name_length}")
      (data (i32.const 1024) "made\\n")
      (func (export "_start") (local $fd i32) (local $i i32)
        (local.set $fd (i32.const 4))
        (loop $deeper
          (if (call $path_create_directory (local.get $fd) (i32.const 128) (i32.const {name_length}))
            (then (call $proc_exit (i32.const 7))))
          (if (call $path_open (local.get $fd) (i32.const 0) (i32.const 128) (i32.const {name_length})
                               (i32.const 2) (i64.const 0x1FFFFFBF) (i64.const 0x1FFFFFFF) (i32.const 0)
                               (i32.const 16))
            (then (call $proc_exit (i32.const 8))))
          (local.set $fd (i32.load (i32.const 16)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $deeper (i32.lt_u (local.get $i) (i32.const {depth}))))
        (call $write (i32.const 1) (i32.const 1024) (i32.const 5))))
    """, MAKING)


@pytest.mark.parametrize(("depth", "made"), [(14, True), (19, False)], ids=["2,814 bytes", "3,819 bytes"])
async def test_how_long_a_path_the_outputs_may_hold_is_the_same_on_every_node(
        executor: WasmExecutor, tmp_path: Path, depth: int, made: bool) -> None:
    """A path's length on the node counts the node's own folders before the job's: 19 folders of 200 characters
    (19 deep, within the 100) passed the system's 4,095 bytes on a node whose folders' path was long, and failed
    there as nested too deep, and not on another. The outputs now hold a path of at most 3,000 bytes on every
    node (``storage.trees.MAX_PATH_BYTES``), and a node's folders may take the rest."""
    outcomes = set()
    for root in (tmp_path / "short", tmp_path.joinpath(*["a-node-with-a-long-data-dir"] * 12)):
        root.mkdir(parents=True)
        try:
            result = await executor.run(request(root, nested_module(depth)))
            outcomes.add((result.exit_code, result.stdout, result.stderr))
        except ExecutorError as e:  # stopped while it ran
            assert not e.retryable and str(e).endswith(SEEN_WHILE_RUNNING), e
            outcomes.add(("stopped", str(e).removesuffix(SEEN_WHILE_RUNNING)))
    if made:
        assert outcomes == {(0, "made\n", "")}, outcomes
    else:
        said = {outcome[-1].strip() for outcome in outcomes}
        assert said == {"disk limit exceeded: the outputs nest directories more than 100 deep, hold a path "
                        "longer than 3,000 bytes, or a folder the node may not read"}, outcomes


@pytest.mark.parametrize("module_", [SPIN, SPIN_SAYING_OUT_OF_MEMORY], ids=["spinning", "saying out of memory"])
async def test_a_run_the_system_killed_is_this_nodes_failure_not_a_result(executor: WasmExecutor,
                                                                          tmp_path: Path, module_: bytes) -> None:
    """A run's process the system killed (the kernel's out-of-memory killer, on a node short of memory) ended in
    a result, "the run ended without an outcome", which nodes with memory to spare outvoted. It is now this
    node's failure: retryable, compared with no one's result. (Here a kill -9 stands in for the kernel.) The
    module's own stderr saying its runtime ran out of memory made it a result again, until the node stopped
    reading its stderr for that."""
    req = request(tmp_path, module_)
    killed: list[int] = []

    async def kill_the_run() -> None:
        while not (pids := _holding(req.outputs_dir)):
            await trio.sleep(0.02)
        for pid in pids:
            os.kill(pid, 9)
        killed.extend(pids)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_the_run)
            with pytest.raises(ExecutorError) as info:
                await executor.run(req)
    assert killed and info.value.retryable
    assert str(info.value) == ("the run's process ended without an outcome on this node: the system killed it, "
                               "it ran out of CPU time, or its runtime ran out of memory")


async def _on_ext4_and_tmpfs(executor: WasmExecutor, tmp_path: Path, wasm: bytes) -> tuple[int, str, str]:
    """The module's outcome in a work folder on the disk and in one on tmpfs (/dev/shm), which must be the same."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) here")
    outcomes = []
    with tempfile_in(shm) as fast:
        for root in (tmp_path / "disk", fast / "memory"):
            root.mkdir()
            result = await executor.run(request(root, wasm))
            outcomes.append((result.exit_code, result.stdout, result.stderr))
    assert outcomes[0] == outcomes[1], outcomes
    return outcomes[0]


async def test_what_a_module_learns_of_files_gone_is_the_same_on_ext4_and_tmpfs(executor: WasmExecutor,
                                                                               tmp_path: Path) -> None:
    """A file removed while open and stat'ed through its descriptor, or a folder a rename replaced, kept its
    number: on ext4 the next file made took it ("the same file"), on tmpfs not. And a folder listed, removed and
    made again in its descriptor's place was listed from the old folder's names on ext4 only."""
    assert await _on_ext4_and_tmpfs(executor, tmp_path, FILES_GONE) == (0, "01\n02\n03\n04\nx1\nx2\ny1\n", "")


async def test_a_kept_listing_numbers_its_entries_the_same_on_ext4_and_tmpfs(executor: WasmExecutor,
                                                                            tmp_path: Path) -> None:
    """A kept listing held host numbers, made the module's when read: an entry removed since, whose host number
    ext4 had given a new file, read as that file's number on ext4 only."""
    assert await _on_ext4_and_tmpfs(executor, tmp_path, KEPT_LISTING) == (0, "03\n02\na", "")


async def test_a_run_out_of_memory_in_its_process_is_this_nodes_failure_and_not_run_twice(
        executor: WasmExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a run's process runs out of memory depends on its interpreter. Such a run was run again in the same
    folders, and the module, seeing its first run's file, printed something else: a result that differed with
    the node. (A low floor for the runtime's share stands in for a node whose interpreter takes more.)"""
    monkeypatch.setattr(wasm_executor, "RUN_MEMORY_FLOOR", 12 << 20)
    req = request(tmp_path, RUN_TWICE, memory="16MiB")
    with pytest.raises(ExecutorError, match="the run's process ran out of memory on this node") as info:
        await executor.run(req)
    assert info.value.retryable


async def test_a_module_listing_a_folder_through_many_descriptors_gets_the_same_on_every_run(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """Each open descriptor kept its own copy of its listing, without a bound: a module opening a folder of 2,000
    long names over and over ran its run's process out of memory after 31 to 122 listings, a point that differed
    from run to run (and got a result saying so, compared with other nodes'). What is kept is bounded now, and
    what is not is listed again."""
    # From the fork server, as nodes run wasm jobs. In a new interpreter (a node whose fork server is restarting)
    # such a run still ran out of memory in CI now and then: a retryable failure of that node, never a result.
    executor = WasmExecutor(cache_dir=tmp_path / "cache")
    await nursery.start(executor.run_pool)
    names = {"n" * 200 + f"{i:05d}": "" for i in range(2000)}
    result = await executor.run(request(tmp_path, LISTED_OVER_AND_OVER, files=names, memory="64MiB"))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "." * 150, "")


def _holding(under: Path) -> list[int]:
    """The processes, other than this one, with a file or folder under ``under`` open."""
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(under)) for fd in fds):
                found.append(pid)
    return found


async def test_a_job_writing_up_to_its_disk_publishes_all_it_wrote(tmp_path: Path) -> None:
    """The node counted the outputs' own folder against the job's disk where its run had not: a module writing
    up to its disk completed, and its outputs were emptied before they were published (exit 0, an empty
    folder). Both now count what is below each output's folder."""
    from compute.runner import Runner
    from executors import ExecutorRegistry
    from jobs import Execution
    from storage import InputRegistry, LocalInput, LocalPublisher

    store = LocalPublisher(tmp_path / "store")
    runner = Runner(ExecutorRegistry({"wasm": WasmExecutor(cache_dir=tmp_path / "cache")}), tmp_path / "work",
                    inputs=InputRegistry([LocalInput(store)]), publisher=store)
    size = (1 << 20) - 4096  # its 1 MiB disk less the module staged, in whole blocks
    writing = module(f"""
      (data (i32.const 128) "big")
      (func (export "_start")
        (drop (memory.grow (i32.const 20)))
        (drop (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 3) (i32.const 9)
                               (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
        (i32.store (i32.const 24) (i32.const 65536)) (i32.store (i32.const 28) (i32.const {size}))
        (if (call $fd_write (i32.load (i32.const 16)) (i32.const 24) (i32.const 1) (i32.const 32))
          (then (call $proc_exit (i32.const 9))))))
    """, MAKING)
    (tmp_path / "m.wasm").write_bytes(writing)
    cid = await store.publish(tmp_path / "m.wasm")
    spec = JobSpec(engine=WasmEngine(module="/in/m.wasm"), inputs=[{"source": f"ipfs://{cid}", "path": "/in/m.wasm"}],
                   outputs=[OutputSpec(name="o", path="/outputs")], resources=Resources(disk="1MiB"))
    outcome = await runner.run(Execution(id="x", job_id="j", node_id="n", requester="r", created_at=0, updated_at=0,
                                         spec=spec))
    assert outcome.error is None and outcome.result.exit_code == 0, outcome
    assert outcome.result.output_sizes == {"o": size}
