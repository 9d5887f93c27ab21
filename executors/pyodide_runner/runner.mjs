// Runs Python jobs in Pyodide under Node.js, offline and deterministically. Started by executors/pyodide.py.
//
//   node runner.mjs --control-fd N [--snapshot FILE] [--warm-up ROUNDS]
//       warm up (in an interpreter no job uses), then for each job line read from stdin: load a fresh
//       interpreter from the snapshot (held in memory) or reset the previous job's in place, report
//       "ready", run the job, report "exit"
//   node runner.mjs --make-snapshot FILE
//       load Pyodide the same way and save its memory to FILE
//
// Protocol: jobs arrive on stdin, one JSON line each (see driver.py for the fields), one at a time: the
// next is sent only after the previous one's "exit". The program's stdout and stderr go to this process's
// fd 1 and 2, and nothing else is written there. Control messages are JSON lines on fd N: {"event": "ready",
// "reset": R} once a fresh interpreter waits for a job (R: the previous job's, reset in place), then {"event": "exit", "code": C, "stdout": B1,
// "stderr": B2} when the program has finished, B1 and B2 being the bytes it wrote to fd 1 and 2 (so that
// the parent can tell one job's output from the next's); any failure caused by the job, e.g. a broken wheel,
// is reported this way with its message on stderr. A job line with "last": true is the process's last job:
// no interpreter is loaded after it, and the process ends when stdin closes. {"event": "error", "message": M}
// means the runner itself failed; it exits then.
//
// Every job gets an interpreter as it is when loaded from the snapshot: the first is loaded, and after a
// job the interpreter is reset in place to the state recorded once it was loaded (see Checkpoint), or,
// when the job changed what a reset cannot put back, dropped and a new one loaded. Nothing a job does
// (module globals, imports, files in its file system, mounts, cwd, its entropy stream or clock) reaches
// the next one. SHOAL_PYODIDE_RESET=0 turns resets off (a new interpreter for every job). The parent
// (executors/pyodide.py) sends one process only jobs of one owner.
//
// Determinism: before Pyodide loads, every source of entropy and time it can reach is replaced:
//   * node:crypto randomFillSync/randomBytes/randomUUID and crypto.getRandomValues draw from one AES-CTR
//     stream; seeded with a fixed "bootstrap" key before each interpreter loads, re-seeded from the job's
//     seed just before the program runs (so every job's interpreter is the same, whatever ran before);
//   * Date and performance.now read one virtual clock that advances CLOCK_STEP_MS per read, the wall
//     clock starting at EPOCH_MS; it restarts at zero before each interpreter loads and just before the
//     program runs, and sleeping (time.sleep, asyncio) moves it forward instead of waiting (driver.py);
//   * PYTHONHASHSEED=0, TZ=UTC, LANG=C.UTF-8, a fixed sys.executable, umask 022 (Pyodide's is the process's);
//   * fetch throws; file times, owners and permission bits of mounted host directories are normalised,
//     and directory listings are sorted.
// Read-only mounts refuse every write (EROFS) at the Emscripten file system layer. The job's memory limit
// caps the WebAssembly heap (MemoryError beyond it).
// Containment is not this file's job: Python code could reach Node.js through Pyodide's `js` module, so the
// runner is started inside bubblewrap with Node's permission model on (executors/sandbox.py), and
// driver.py refuses job code the `js` and `pyodide_js` modules.

import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PYODIDE_DIR = path.join(HERE, "node_modules", "pyodide") + path.sep;
const EPOCH_MS = 1_704_067_200_000; // 2024-01-01T00:00:00Z, as executors/_common.py EPOCH_SECONDS
const CLOCK_STEP_MS = 1; // as executors/_common.py CLOCK_STEP_NS
const resetInPlace = process.env.SHOAL_PYODIDE_RESET !== "0"; // off: a fresh interpreter for every job
const GC_ABOVE_RSS = 640 * 1024 * 1024; // bytes of resident memory above which old interpreters are collected
// bytes a new interpreter may add before its job grows its heap: below a memory cgroup's limit (the job's
// "resident_limit"), old interpreters are collected unless this and the job's heap still fit beside them
const FRESH_INTERPRETER = 128 * 1024 * 1024;
const EROFS = 69; // Emscripten errno numbers
const EPERM = 63;

process.env.TZ = "UTC";
// Pyodide's umask is this process's (process.umask): it starts at the same value for every interpreter.
const UMASK = 0o022;
process.umask(UMASK);

// Emscripten's NODEFS reads file-flag constants through process.binding, which Node's permission model
// (on inside the sandbox) refuses; the same constants are public as fs.constants.
Object.defineProperty(process, "binding", {
  value: (name) => {
    if (name === "constants") return { fs: fs.constants, os: os.constants };
    throw new Error(`process.binding(${JSON.stringify(name)}) is not available`);
  },
  configurable: true,
});

// ---- entropy ------------------------------------------------------------------------------------------

const realCreateCipheriv = crypto.createCipheriv;
const realCreateHash = crypto.createHash;
let entropy = null;

function seedEntropy(label, seed) {
  const key = realCreateHash("sha256").update(label).update(seed).digest();
  entropy = realCreateCipheriv("aes-256-ctr", key, Buffer.alloc(16));
  entropyUsed = 0;
}

let entropyUsed = 0; // bytes drawn since the stream was last seeded

function fill(view) {
  entropyUsed += view.byteLength;
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  bytes.set(entropy.update(Buffer.alloc(bytes.length)));
  return view;
}

crypto.randomFillSync = (buf, offset = 0, size) => {
  const bytes = new Uint8Array(buf.buffer ?? buf, buf.byteOffset ?? 0, buf.byteLength);
  const end = size === undefined ? bytes.length : offset + size;
  fill(bytes.subarray(offset, end));
  return buf;
};
crypto.randomFill = (buf, ...rest) => {
  const cb = rest.pop();
  crypto.randomFillSync(buf, ...rest);
  queueMicrotask(() => cb(null, buf));
};
crypto.randomBytes = (n, cb) => {
  const buf = fill(Buffer.alloc(n));
  if (cb) queueMicrotask(() => cb(null, buf));
  return buf;
};
crypto.randomUUID = () => {
  const b = fill(Buffer.alloc(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};
const getRandomValues = (view) => fill(view);
// globalThis.crypto is the webcrypto object; node:crypto's getRandomValues forwards to it.
Object.defineProperty(globalThis.crypto, "getRandomValues", { value: getRandomValues, configurable: true });

// ---- time ---------------------------------------------------------------------------------------------

const RealDate = Date;
let virtualMs = 0;
const tick = () => (virtualMs += CLOCK_STEP_MS);
const wallNow = () => EPOCH_MS + tick();

function FakeDate(...args) {
  if (!new.target) return new RealDate(wallNow()).toString();
  return args.length ? new RealDate(...args) : new RealDate(wallNow());
}
FakeDate.prototype = RealDate.prototype;
FakeDate.parse = RealDate.parse;
FakeDate.UTC = RealDate.UTC;
// Fixed for good: job code can reach them (through `js`), and a `Date.now = () => 0` once stopped every later
// job of its process from seeing the clock every node shows
const fixed = (value) => ({ value, writable: false, configurable: false });
Object.defineProperty(FakeDate, "now", fixed(wallNow));
Object.defineProperty(globalThis, "Date", fixed(FakeDate));
Object.defineProperty(performance, "now", fixed(tick));

// ---- memory -------------------------------------------------------------------------------------------

// The job's memory limit caps the WebAssembly heap: Emscripten grows it through this method, and when
// growing fails malloc returns NULL and Python raises MemoryError (the same way on every node).
// The files the job writes to Emscripten's in-memory file system (/tmp, its home: all but the mounts)
// count against the same limit. They live in JavaScript arrays beside the heap, where its limit did not
// reach: a 64 MiB job held 300 MiB there, and more took the runner down. Past the limit a write fails
// with ENOSPC (OSError in Python), as a container's tmpfs counts against its memory.
let memoryLimit = Infinity;
let heapRefused = false; // the job's memory limit refused its heap room
let filesRefused = false; // or its files
const ENOSPC = 51;
// in-memory file node -> { base: bytes it held when the job first changed it, counted: bytes counted now }
const files = new Map();
let fileBytes = 0; // what the job's in-memory files hold beyond what they held before it (never below 0 each)
// A file that grows gets a larger array (a large one, in place: see growInPlace); the old one is garbage that V8
// collects when it sees fit, which once was after 300 MiB of it (a job writing 90 MiB to /tmp). Where a memory
// cgroup counts all the process holds, that took the runner past it, so the runner collects itself once this
// much file storage was dropped: replaced, or deleted (found so when the job reaches its limit).
const COLLECT_AFTER_DROPPED = 32 * 1024 * 1024;
let droppedBytes = 0;
let guarded = 0; // calls of the file functions below in progress (they call one another)
let filesFS = null; // the file system of the interpreter running the job
// A large file grows in place instead: its array is a view of a resizable ArrayBuffer, which V8 reserves
// address space for once and commits as it grows. A copy had the old and new arrays resident together: a
// 900 MiB file held 1.9 GiB for a moment. Only large ones, since each takes GROW_IN_PLACE_MAX of address space
// (the reservation does not count against RLIMIT_DATA; 32,000 of them fill a process's address space).
const GROW_IN_PLACE_FROM = 8 * 1024 * 1024;
const GROW_IN_PLACE_MAX = 4 * 1024 ** 3; // the most V8 lets one resizable ArrayBuffer hold
const GROW_IN_PLACE_STEP = 1024 * 1024; // capacity is rounded up to this: a resize per MiB, not per write
const growingInPlace = new WeakSet(); // file arrays that are views of a resizable ArrayBuffer

function overLimit(heapBytes, extra) {
  if (heapBytes + fileBytes + extra <= memoryLimit) return false;
  const open = new Set(filesFS?.streams.filter(Boolean).map((s) => s.node));
  for (const [node, file] of files) {
    if (node.parent?.contents?.[node.name] !== node && !open.has(node)) {
      fileBytes -= file.counted; // deleted since, and closed: its room comes back
      droppedBytes += node.contents?.length ?? 0;
      files.delete(node);
    }
  }
  // ... once its array is freed: V8 may keep garbage resident long after, and a job deleting 60 MiB files to
  // write new ones went past its memory cgroup while it counted no more than its memory
  if (droppedBytes > COLLECT_AFTER_DROPPED) {
    droppedBytes = 0;
    globalThis.gc?.();
  }
  return heapBytes + fileBytes + extra > memoryLimit;
}

// Where a job may keep scratch files in memory without a word: any other path it writes to (/outputs/r.json with no
// -o) is lost when it ends, and a container's read-only root says so at once: so does this, at the end.
const SCRATCH = ["/tmp", "/home/pyodide"];

function unkept(FS) {
  const paths = [];
  for (const node of files.keys()) {
    if (node.parent?.contents?.[node.name] !== node) continue; // deleted since
    const path = FS.getPath(node);
    if (!SCRATCH.some((dir) => path.startsWith(dir + "/"))) paths.push(path);
  }
  return paths.sort();
}

function recount(node, before) {
  let file = files.get(node);
  if (file === undefined) files.set(node, (file = { base: before, counted: 0 }));
  const counted = Math.max(0, (node.contents?.length ?? 0) - file.base);
  fileBytes += counted - file.counted;
  file.counted = counted;
}

const realGrow = WebAssembly.Memory.prototype.grow;
WebAssembly.Memory.prototype.grow = function grow(pages) {
  if (overLimit(this.buffer.byteLength, pages * 65536)) {
    heapRefused = true;
    throw new RangeError("the job's memory limit is reached");
  }
  return realGrow.call(this, pages);
};

// Counts what an interpreter's in-memory files hold, by their sizes after every change: a file grows through
// expandFileStorage or resizeFileStorage, or is given its first bytes whole by stream_ops.write (which a
// plain `open(...).write(data)` takes: 512 MiB of files once went past a limit that watched only the first
// two). Sizes, not changes, are counted, so that shrinking a file gives back no more than it took.
function limitFiles(pyodide) {
  const { FS } = pyodide;
  const MEMFS = FS.filesystems.MEMFS;
  const heap = () => pyodide._module.HEAPU8.byteLength;
  const guard = (real, growth) => function (...args) {
    const node = args[0].node ?? args[0]; // a stream's, or the node itself
    let old = node.contents;
    const before = old?.length ?? 0;
    const extra = growth(before, ...args);
    if (extra > 0 && overLimit(heap(), extra)) {
      filesRefused = true;
      throw new FS.ErrnoError(ENOSPC);
    }
    guarded++;
    try {
      return real.apply(this, args);
    } catch (e) {
      // V8 could not allocate the larger array (the process's address space limit): the write fails, as past
      // the limit, instead of the job's whole runner
      if (!(e instanceof RangeError)) throw e;
      filesRefused = true;
      throw new FS.ErrnoError(ENOSPC);
    } finally {
      guarded--;
      recount(node, before);
      const replaced = node.contents !== old;
      old = null; // or the collection below keeps it: a 900 MiB file held three copies of itself
      // once, when the outermost call returns (a write grows its file through expandFileStorage)
      if (replaced && !guarded && (droppedBytes += before) > COLLECT_AFTER_DROPPED) {
        droppedBytes = 0;
        globalThis.gc?.();
      }
    }
  };
  const realExpand = MEMFS.expandFileStorage;
  const realResize = MEMFS.resizeFileStorage;
  const realWrite = MEMFS.stream_ops.write;
  const expand = function (node, capacity) {
    if ((node.contents?.length ?? 0) < capacity && !growInPlace(node, capacity)) realExpand.call(this, node, capacity);
  };
  const resize = function (node, size) {
    if (node.usedBytes === size) return;
    if (growInPlace(node, size, true)) node.usedBytes = size;
    else realResize.call(this, node, size);
  };
  // The file's first bytes, when many, go into an array that can grow: MEMFS would copy them into one sized
  // exactly, which the next write would copy again.
  const firstWrite = function (stream, buffer, offset, length, position, canOwn) {
    const node = stream.node;
    if (canOwn || node.usedBytes !== 0 || position !== 0 || !growInPlace(node, length)) {
      return realWrite.call(this, stream, buffer, offset, length, position, canOwn);
    }
    node.mtime = node.ctime = Date.now();
    node.contents.set(buffer.subarray(offset, offset + length), 0);
    node.usedBytes = length;
    return length;
  };
  MEMFS.expandFileStorage = guard(expand, (before, node, size) => size - before);
  MEMFS.resizeFileStorage = guard(resize, (before, node, size) => size - before);
  const write = guard(firstWrite, (before, stream, buffer, offset, length, position) =>
    position + length - before);
  MEMFS.stream_ops.write = write;
  if (MEMFS.ops_table) MEMFS.ops_table.file.stream.write = write; // what the nodes' streams call
}

// Gives ``node`` an array of ``size`` bytes (its first bytes kept) that grows in place, and says whether it did:
// not for small files, nor past GROW_IN_PLACE_MAX. ``exact``: the size is the file's (a truncate), not a
// capacity to round up. A file truncated below GROW_IN_PLACE_FROM goes back to a plain array: each in-place one
// holds 4 GiB of address space whatever its size, and files truncated to 8 MiB and back to nothing once filled
// a process's address space while they counted nothing against the job's memory.
function growInPlace(node, size, exact = false) {
  const contents = node.contents;
  const inPlace = growingInPlace.has(contents);
  if (size < GROW_IN_PLACE_FROM || size > GROW_IN_PLACE_MAX) return false;
  const capacity = exact ? size : Math.min(GROW_IN_PLACE_MAX, Math.ceil(size / GROW_IN_PLACE_STEP) * GROW_IN_PLACE_STEP);
  if (inPlace) {
    contents.buffer.resize(capacity); // a shrunk file's bytes past its end read as zeros when it grows again
    return true;
  }
  const grown = new Uint8Array(new ArrayBuffer(capacity, { maxByteLength: GROW_IN_PLACE_MAX }));
  const kept = Math.min(node.usedBytes, size);
  if (contents) grown.set(ArrayBuffer.isView(contents) ? contents.subarray(0, kept) : contents.slice(0, kept));
  growingInPlace.add(grown);
  node.contents = grown;
  return true;
}

// ---- compiled code ------------------------------------------------------------------------------------

// Pyodide compiles its WebAssembly module on every load; the same bytes give the same module, so each
// interpreter after the first is instantiated from the module compiled first (and optimised since).
const realInstantiate = WebAssembly.instantiate;
const compiled = new Map(); // byte length -> [bytes, module]
WebAssembly.instantiate = async function instantiate(source, imports) {
  if (source instanceof WebAssembly.Module || !(ArrayBuffer.isView(source) || source instanceof ArrayBuffer)) {
    return realInstantiate(source, imports);
  }
  const bytes = ArrayBuffer.isView(source) ? new Uint8Array(source.buffer, source.byteOffset, source.byteLength)
    : new Uint8Array(source);
  const known = compiled.get(bytes.length);
  let module;
  if (known && Buffer.compare(known[0], bytes) === 0) {
    module = known[1];
  } else {
    module = await WebAssembly.compile(bytes);
    compiled.set(bytes.length, [Buffer.from(bytes), module]);
  }
  const instance = await realInstantiate(module, imports);
  if (instance.exports._hiwire_get) lastInstance = instance; // the interpreter's (see Checkpoint)
  return { module, instance };
};
let lastInstance = null;

// Loading also compiles small modules (one per JavaScript function placed in the function table); the same
// bytes give the same module, so these are compiled once too.
const RealModule = WebAssembly.Module;
const smallModules = new Map(); // bytes (base64) -> module
WebAssembly.Module = new Proxy(RealModule, {
  construct(target, args) {
    const [source] = args;
    const view = ArrayBuffer.isView(source) ? source : source instanceof ArrayBuffer ? new Uint8Array(source) : null;
    if (args.length !== 1 || view === null || view.byteLength > 65536) return Reflect.construct(target, args);
    const key = Buffer.from(view.buffer, view.byteOffset, view.byteLength).toString("base64");
    let module = smallModules.get(key);
    if (module === undefined) {
      module = Reflect.construct(target, args);
      if (smallModules.size < 4096) smallModules.set(key, module);
    }
    return module;
  },
});

// ---- reset in place ------------------------------------------------------------------------------------

// Loading an interpreter from the snapshot costs about 200 ms of CPU (Emscripten's dynamic linking, V8's
// garbage collection); putting back the state the previous index's interpreter had once loaded costs a few.
// That state is: the WebAssembly memory, tables and mutable globals; Emscripten's file system (JavaScript
// objects); Pyodide's tables of JavaScript objects referenced from Python (hiwire); this runner's entropy
// stream and clock. A Checkpoint records it; restore() puts it back, or refuses (returns false) when the job
// changed something it cannot put back exactly: the memory grew, a dynamic library or a JavaScript function
// was added to the function table, a JavaScript proxy of a Python object outlived the job. The caller then
// loads a fresh interpreter, as before.

// JavaScript proxies of Python objects decref their object when collected: one made during a job would do
// so in the restored memory. Those registered since the checkpoint are tracked, and forbid a restore.
const RealFinalizationRegistry = FinalizationRegistry;
let registeredSinceCheckpoint = new Set();
globalThis.FinalizationRegistry = class extends RealFinalizationRegistry {
  register(target, held, token) {
    registeredSinceCheckpoint.add(token ?? target);
    return super.register(target, held, token);
  }

  unregister(token) {
    registeredSinceCheckpoint.delete(token);
    return super.unregister(token);
  }
};

// The size of a table readable only through a getter that traps past its end.
function tableSize(get) {
  const readable = (i) => {
    try {
      get(i);
      return true;
    } catch {
      return false;
    }
  };
  if (!readable(0)) return 0;
  let lo = 0;
  let hi = 1;
  while (readable(hi)) [lo, hi] = [hi, hi * 2];
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (readable(mid)) lo = mid;
    else hi = mid;
  }
  return lo + 1;
}

// Copies are kept from one checkpoint to the next (the process holds one interpreter at a time): filling
// memory already in use costs far less than taking new (page faults, zeroing).
let memoryCopy = new Uint8Array(0);
const fileCopies = new Map(); // path -> bytes of a file held in memory at the last checkpoint

function copyOf(bytes, path) {
  const known = fileCopies.get(path);
  if (known && known.length === bytes.length && Buffer.compare(known, bytes) === 0) return known;
  const copy = bytes.slice();
  fileCopies.set(path, copy);
  return copy;
}

const own = (object) => Object.assign(Object.create(null), object);

function putBack(object, saved) {
  for (const key of Object.keys(object)) if (!(key in saved)) delete object[key];
  Object.assign(object, saved);
}

const isDirectoryContents = (c) => c !== null && typeof c === "object" && !ArrayBuffer.isView(c) && !Array.isArray(c);

// Emscripten's file system: every node reachable (MEMFS trees, mounts, the name hash table, open streams),
// with its own properties and, for files held in memory, a copy of their bytes.
class FileSystemState {
  constructor(FS) {
    this.FS = FS;
    this.nodes = new Map(); // node -> own properties
    this.directories = new Map(); // MEMFS directory node -> its entries
    this.files = new Map(); // MEMFS file node -> [contents array, copy of its bytes]
    this.mounts = new Map(); // mount -> [own properties, child mounts]
    const pending = [FS.root, ...FS.nameTable.filter(Boolean), ...FS.streams.filter(Boolean).map((s) => s.node)];
    while (pending.length) {
      const node = pending.pop();
      if (!node || this.nodes.has(node)) continue;
      this.nodes.set(node, own(node));
      pending.push(node.parent, node.name_next, node.mounted?.root);
      for (const mount of [node.mount, node.mounted]) {
        if (mount && !this.mounts.has(mount)) this.mounts.set(mount, [own(mount), [...(mount.mounts ?? [])]]);
      }
      const c = node.contents;
      if (FS.isDir(node.mode) && isDirectoryContents(c)) {
        this.directories.set(node, own(c));
        pending.push(...Object.values(c));
      } else if (ArrayBuffer.isView(c)) {
        this.files.set(node, [c, copyOf(c, FS.getPath(node))]);
      } else if (Array.isArray(c)) {
        this.files.set(node, [c, c.slice()]);
      }
    }
    this.nameTable = [...FS.nameTable];
    this.streams = FS.streams.map((s) => s && [s, own(s), own(s.shared)]);
    this.devices = own(FS.devices);
    this.scalars = { nextInode: FS.nextInode, currentPath: FS.currentPath, syncFSRequests: FS.syncFSRequests,
                     major: FS.createDevice.major };
  }

  restore() {
    const { FS } = this;
    // Files the job left open are closed (a host file behind a mount holds a descriptor).
    FS.streams.forEach((stream, fd) => {
      if (stream && this.streams[fd]?.[0] !== stream) {
        try {
          FS.close(stream);
        } catch {
          // closed either way below
        }
      }
    });
    for (const [node, saved] of this.nodes) putBack(node, saved);
    for (const [node, entries] of this.directories) putBack(node.contents, entries);
    for (const [node, [array, bytes]] of this.files) {
      node.contents = array;
      // a file that grows gets a new array, or, when large, resizes its own (growInPlace): then it is not reset
      if (array.length !== bytes.length) return false;
      if (ArrayBuffer.isView(array) ? Buffer.compare(array, bytes) !== 0 : array.some((b, i) => b !== bytes[i])) {
        if (ArrayBuffer.isView(array)) array.set(bytes);
        else bytes.forEach((b, i) => (array[i] = b));
      }
    }
    for (const [mount, [saved, children]] of this.mounts) {
      putBack(mount, saved);
      if (mount.mounts) mount.mounts.splice(0, mount.mounts.length, ...children);
    }
    FS.nameTable.length = 0;
    FS.nameTable.push(...this.nameTable);
    FS.streams.length = 0;
    for (const entry of this.streams) {
      if (!entry) {
        FS.streams.push(entry);
        continue;
      }
      const [stream, saved, shared] = entry;
      putBack(stream, saved);
      putBack(stream.shared, shared);
      FS.streams.push(stream);
    }
    putBack(FS.devices, this.devices);
    Object.assign(FS, { nextInode: this.scalars.nextInode, currentPath: this.scalars.currentPath,
                        syncFSRequests: this.scalars.syncFSRequests });
    FS.createDevice.major = this.scalars.major;
    return true;
  }
}

// The whole state of a loaded interpreter (see above), taken once it is loaded and before any job runs. One
// interpreter at a time: a new checkpoint overwrites the previous one's copies.
class Checkpoint {
  constructor(pyodide, instance) {
    const Module = pyodide._module;
    const x = instance.exports;
    this.pyodide = pyodide;
    this.x = x;
    this.Module = Module;
    const memory = new Uint8Array(x.memory.buffer);
    if (memoryCopy.length !== memory.length) memoryCopy = new Uint8Array(memory.length);
    memoryCopy.set(memory);
    this.memory = memoryCopy;
    const hiwireSize = tableSize(x._hiwire_get);
    this.hiwire = Array.from({ length: hiwireSize }, (_, i) => x._hiwire_get(i));
    this.immortalSize = tableSize(x._hiwire_immortal_get);
    this.maps = []; // JavaScript Maps among the immortals (hiwire's deduplication map): their entries
    for (let i = 0; i < this.immortalSize; i++) {
      const value = x._hiwire_immortal_get(i);
      if (value instanceof Map) this.maps.push([value, [...value]]);
    }
    // Emscripten changes the function table only through these two methods (addFunction, loading a library),
    // and keeps JavaScript mirrors of it: a change since the checkpoint forbids a restore.
    this.table = Module.wasmTable;
    this.tableLength = this.table.length;
    this.tableChanged = false;
    for (const method of ["set", "grow"]) {
      const real = WebAssembly.Table.prototype[method];
      const checkpoint = this;
      this.table[method] = function (...args) {
        checkpoint.tableChanged = true;
        return real.apply(this, args);
      };
    }
    this.libraries = Object.keys(Module.LDSO.loadedLibsByName).length;
    this.packages = Object.keys(pyodide.loadedPackages).length;
    this.stack = [x.__stack_pointer.value, x.emscripten_stack_get_base(), x.emscripten_stack_get_end()];
    this.tempret = x._emscripten_tempret_get();
    this.fs = new FileSystemState(pyodide.FS);
    this.entropyUsed = entropyUsed;
    this.virtualMs = virtualMs;
    registeredSinceCheckpoint = new Set();
  }

  // What the job changed that restore() cannot put back (null: nothing).
  obstacle() {
    const { x, Module } = this;
    if (x.memory.buffer.byteLength !== this.memory.length) return "the memory grew";
    if (this.tableChanged || this.table.length !== this.tableLength) return "the function table changed";
    if (Object.keys(Module.LDSO.loadedLibsByName).length !== this.libraries) return "a library was loaded";
    if (Object.keys(this.pyodide.loadedPackages).length !== this.packages) return "a package was installed";
    if (tableSize(x._hiwire_immortal_get) !== this.immortalSize) return "a JavaScript value was interned";
    if (registeredSinceCheckpoint.size) return "a proxy of a Python object outlived the job";
    if (x.emscripten_stack_get_base() !== this.stack[1] || x.emscripten_stack_get_end() !== this.stack[2]) {
      return "the stack moved";
    }
    return null;
  }

  // Put the interpreter back as it was at the checkpoint; false if it cannot be (the caller drops it).
  restore() {
    if (this.obstacle() !== null) return false;
    const { x } = this;
    new Uint8Array(x.memory.buffer).set(this.memory);
    const hiwireSize = tableSize(x._hiwire_get);
    this.hiwire.forEach((value, i) => x._hiwire_set(i, value));
    for (let i = this.hiwire.length; i < hiwireSize; i++) x._hiwire_delete(i);
    for (const [map, entries] of this.maps) {
      map.clear();
      for (const [key, value] of entries) map.set(key, value);
    }
    x.__stack_pointer.value = this.stack[0];
    x._emscripten_tempret_set(this.tempret);
    if (!this.fs.restore()) return false;
    seedEntropy("shoal-pyodide-bootstrap", Buffer.alloc(0));
    if (this.entropyUsed) fill(new Uint8Array(this.entropyUsed));
    virtualMs = this.virtualMs;
    process.umask(UMASK);
    memoryLimit = Infinity;
    heapRefused = filesRefused = false;
    registeredSinceCheckpoint = new Set();
    return true;
  }
}

// ---- no network ---------------------------------------------------------------------------------------

globalThis.fetch = async (resource) => {
  throw new TypeError(`network access is disabled for Shoal jobs (fetch ${String(resource)})`);
};

// ---- output -------------------------------------------------------------------------------------------

const pause = new Int32Array(new SharedArrayBuffer(4));

const written = { 1: 0, 2: 0 }; // bytes the current job wrote to fd 1 and 2
// The runner's own copy: job code can replace fs.writeSync (Node's fs module is one object, reachable
// through `js`), and so once rewrote the next jobs' output and the exit codes the runner reported.
const writeSync = fs.writeSync;

function writeAll(fd, bytes) {
  if (fd in written) written[fd] += bytes.length;
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
      Atomics.wait(pause, 0, 0, 1); // a non-blocking pipe is full: let the parent catch up
    }
  }
}

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const controlFd = option("--control-fd") === undefined ? null : Number(option("--control-fd"));

// Job code can reach Node's console and process.stdout/stderr (through Pyodide's `js` module, past
// driver.py's refusal). What it writes there while its program runs is its output, counted as the
// program's is; anything written there at another time (a callback a job left behind, a warning while an
// interpreter loads) is dropped: uncounted bytes on fd 1 or 2 would be taken for the next job's output.
let programRunning = false;
// The job wrote into /context, its working directory, which is read-only: a bare EROFS said nothing of -o
let contextRefused = false;
for (const [stream, fd] of [[process.stdout, 1], [process.stderr, 2]]) {
  stream.write = (chunk, encoding, callback) => {
    if (programRunning) writeAll(fd, Buffer.from(chunk, typeof encoding === "string" ? encoding : undefined));
    (typeof encoding === "function" ? encoding : callback)?.();
    return true;
  };
}

function control(message) {
  if (controlFd !== null) writeAll(controlFd, Buffer.from(JSON.stringify(message) + "\n"));
}

// ---- file systems -------------------------------------------------------------------------------------

// NODEFS as the job should see it: host metadata that differs between nodes is normalised, listings are
// sorted, and a read-only mount refuses writes.
function jobFS(FS, NODEFS, writable) {
  const refuse = (node) => {
    if (node?.mount?.mountpoint === "/context") contextRefused = true;
    throw new FS.ErrnoError(EROFS);
  };
  // The inode number is Emscripten's own for the node (what a listing gives too), one link, directories of
  // 4096 bytes, blocks as the size needs them: the host's differ from node to node.
  const normalise = (stat, node) => {
    const time = new RealDate(EPOCH_MS);
    const exec = stat.mode & 0o111 ? 0o111 : 0;
    const kind = stat.mode & 0o170000;
    const perms = kind === 0o040000 ? 0o755 : 0o644 | exec;
    const size = kind === 0o040000 ? 4096 : stat.size;
    return { ...stat, dev: 1, ino: node.id, nlink: 1, uid: 0, gid: 0, rdev: 0,
             mode: kind | (writable ? perms : perms & ~0o222), size, blksize: 4096,
             blocks: Math.ceil(size / 4096) * 8, atime: time, mtime: time, ctime: time };
  };
  const node_ops = {
    ...NODEFS.node_ops,
    statfs: undefined, // the host file system's free blocks and inodes: Emscripten's fixed figures instead
    getattr: (node) => normalise(NODEFS.node_ops.getattr(node), node),
    lookup: (parent, name) => adopt(NODEFS.node_ops.lookup(parent, name)),
    readdir: (node) => NODEFS.node_ops.readdir(node).sort(),
  };
  const stream_ops = { ...NODEFS.stream_ops, getattr: (stream) => normalise(NODEFS.stream_ops.getattr(stream), stream.node) };
  if (writable) {
    node_ops.mknod = (parent, name, mode, dev) => adopt(NODEFS.node_ops.mknod(parent, name, mode, dev));
  } else {
    for (const op of ["mknod", "rename", "unlink", "rmdir", "symlink", "setattr"]) node_ops[op] = refuse;
    stream_ops.setattr = stream_ops.write = stream_ops.msync = (stream) => refuse(stream.node);
    stream_ops.open = (stream) => {
      if (stream.flags & (0o1 | 0o2 | 0o100 | 0o1000 | 0o2000)) refuse(stream.node);
      return NODEFS.stream_ops.open(stream);
    };
  }
  function adopt(node) {
    node.node_ops = node_ops;
    node.stream_ops = stream_ops;
    return node;
  }
  return { ...NODEFS, mount: (mount) => adopt(NODEFS.mount(mount)) };
}

function mountAll(pyodide, mounts) {
  const { FS } = pyodide;
  const NODEFS = FS.filesystems.NODEFS;
  const types = { true: jobFS(FS, NODEFS, true), false: jobFS(FS, NODEFS, false) };
  for (const m of mounts) {
    try {
      if (!FS.analyzePath(m.target).exists) FS.mkdirTree(m.target);
      FS.mount(types[m.writable], { root: m.host }, m.target);
    } catch (e) {
      if (e?.name !== "ErrnoError") throw e;
      throw new JobError(`cannot mount ${m.target} (errno ${e.errno}): is it inside a read-only input?`);
    }
  }
}

// ---- the run ------------------------------------------------------------------------------------------

async function load(snapshot, makeSnapshot) {
  const { loadPyodide } = await import(PYODIDE_DIR + "pyodide.mjs");
  const discard = () => {};
  return await loadPyodide({
    indexURL: PYODIDE_DIR,
    env: { PYTHONHASHSEED: "0", LANG: "C.UTF-8", HOME: "/home/pyodide" },
    _sysExecutable: "/usr/bin/python3",
    stdout: discard,
    stderr: discard,
    checkAPIVersion: true,
    ...(makeSnapshot ? { _makeSnapshot: true } : {}),
    ...(snapshot ? { _loadSnapshot: snapshot } : {}),
  });
}

// Job lines from stdin, read one at a time (null once stdin is closed: the parent needs no more).
const jobLines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]();

async function readJob() {
  const { value, done } = await jobLines.next();
  return done ? null : JSON.parse(value);
}

async function installWheels(pyodide, wheels) {
  for (const wheel of wheels) {
    const problems = [];
    try {
      await pyodide.loadPackage(wheel.host, {
        messageCallback: () => {},
        errorCallback: (message) => problems.push(message),
        checkIntegrity: false,
      });
    } catch (e) {
      problems.push(e?.message ?? String(e));
    }
    if (problems.length) throw new JobError(`cannot install requirement ${wheel.path}: ${problems.join("; ")}`);
  }
}

class JobError extends Error {}

const DRIVER = fs.readFileSync(path.join(HERE, "driver.py"), "utf8");
const DRIVER_MODULE = "_shoal_driver";

// driver.py as a module in sys.modules, so that it is part of the memory snapshot: every interpreter
// loaded from the snapshot finds it defined, instead of compiling and running the driver again.
function defineDriver(pyodide) {
  const namespace = pyodide.runPython(
    `import sys, types\nsys.modules["${DRIVER_MODULE}"] = types.ModuleType("${DRIVER_MODULE}")\n`
    + `sys.modules["${DRIVER_MODULE}"].__dict__`);
  pyodide.runPython(DRIVER, { globals: namespace, filename: "<shoal-runner>" });
  namespace.destroy();
}

// A fresh interpreter from the snapshot, loaded exactly as in a new process: the bootstrap entropy and the
// clock start over, and no memory limit applies while loading.
async function fresh(snapshot) {
  seedEntropy("shoal-pyodide-bootstrap", Buffer.alloc(0));
  virtualMs = 0;
  memoryLimit = Infinity;
  heapRefused = filesRefused = false;
  process.umask(UMASK);
  const pyodide = await load(snapshot, false);
  limitFiles(pyodide);
  const instance = lastInstance;
  const driver = pyodide.pyimport(DRIVER_MODULE);
  const interpreter = { pyodide, driver, runJob: driver.run_job, prime: driver.prime };
  interpreter.prime(() => {});
  interpreter.checkpoint = new Checkpoint(pyodide, instance);
  return interpreter;
}

async function runJob({ pyodide, runJob: runDriver }, job) {
  written[1] = written[2] = 0;
  pyodide.setStdin({ read: () => 0 });
  pyodide.setStdout({ write: (buf) => (writeAll(1, buf), buf.length) });
  pyodide.setStderr({ write: (buf) => (writeAll(2, buf), buf.length) });
  let code;
  try {
    mountAll(pyodide, job.mounts);
    await installWheels(pyodide, job.wheels);
    const reset = () => {
      seedEntropy("shoal-pyodide-job", Buffer.from(job.seed, "hex"));
      virtualMs = 0;
      files.clear();
      fileBytes = 0;
      filesFS = pyodide.FS;
      contextRefused = false;
      if (job.memory_limit) memoryLimit = job.memory_limit;
    };
    const advance = (ms) => {
      virtualMs += ms;
    };
    programRunning = true;
    try {
      code = runDriver(JSON.stringify(job), reset, advance);
    } finally {
      programRunning = false;
    }
    if (contextRefused && code !== 0) {  // a program that caught the error and went on ran as meant
      writeAll(2, Buffer.from("shoal: /context (your working directory) is read-only; write outputs under a path "
                              + "given with -o NAME:/PATH, e.g. -o results:/outputs\n"));
    }
    const lost = unkept(pyodide.FS);
    if (lost.length) {
      const more = lost.length > 1 ? ` and ${lost.length - 1} more` : "";
      writeAll(2, Buffer.from(`shoal: the job wrote ${lost[0]}${more} outside its outputs, in memory: not kept `
                              + "(a folder is kept when the job declares it: -o NAME:/PATH)\n"));
    }
    // A full /tmp (ENOSPC) is explained whatever the exit; a refused heap only when the program failed: Python's
    // allocator may ask for more than it needs and take less, and a program that caught MemoryError ran as meant
    if (filesRefused || (heapRefused && code !== 0)) {
      const mib = (job.memory_limit / 1048576).toFixed(0);
      writeAll(2, Buffer.from(`memory limit: the program needed more than ${mib} MiB (resources.memory), `
                              + "counting the files it keeps in memory (/tmp)\n"));
    }
  } catch (e) {
    if (!(e instanceof JobError)) throw e;
    writeAll(2, Buffer.from(`${e.message ?? e}\n`));
    code = 1;
  }
  return code;
}

const realSetImmediate = setImmediate; // the runner's own: job code may replace the global

// The process's timers, immediates and pending callbacks, by kind
function resources() {
  const counts = new Map();
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  return counts;
}

function leftBehind(before) {
  for (const [kind, count] of resources()) if (count > (before.get(kind) ?? 0)) return true;
  return false;
}

async function serve() {
  const snapshot = option("--snapshot") ? fs.readFileSync(option("--snapshot")) : undefined;
  const rounds = Number(option("--warm-up") ?? 0);
  if (rounds > 0) {
    // V8 compiles the interpreter's hot paths here, in an interpreter that no job uses: the compiled code
    // is shared by every interpreter this process loads, the warm-up's Python objects are not.
    (await fresh(snapshot)).driver.warm_up(rounds);
  }
  let interpreter = null; // the previous job's, when it could be reset in place
  let collectAbove = GC_ABOVE_RSS;
  for (;;) {
    const reset = interpreter !== null;
    if (!reset) {
      // The previous interpreters' memory is freed before the next one takes its own, when it adds up. Nothing
      // of the runner's may still hold the last one then: its heap and files outlived a collection, and a
      // 256 MiB sweep's every second index went past its memory cgroup.
      lastInstance = filesFS = null;
      files.clear();
      if (process.memoryUsage.rss() > collectAbove) globalThis.gc?.();
      interpreter = await fresh(snapshot);
    }
    control({ event: "ready", reset });
    const job = await readJob();
    if (job === null) process.exit(0);
    const held = resources();
    const code = await runJob(interpreter, job);
    // Job code that reached Node.js may leave a timer, a socket or any callback behind: it would run between
    // its owner's jobs and inside the next one. Such a process serves no other job. Callbacks it queued run
    // first (one turn of the event loop): a server's listen() starts in one, and held 760 MiB of socket buffers.
    await new Promise((resolve) => realSetImmediate(resolve));
    const reusable = !leftBehind(held);
    control({ event: "exit", code, stdout: written[1], stderr: written[2], ...(reusable ? {} : { reusable }) });
    if (job.resident_limit > 0) {  // the next job is its owner's: the same memory limit
      collectAbove = Math.min(GC_ABOVE_RSS, job.resident_limit - job.memory_limit - FRESH_INTERPRETER);
    }
    // A job with wheels changed more than a reset puts back (imported packages' files, loadPackage's state).
    if (job.last || job.wheels.length || !resetInPlace || !interpreter.checkpoint.restore()) {
      interpreter = null;
    } else if (fileBytes + droppedBytes > COLLECT_AFTER_DROPPED) {
      // The reset dropped the files the job kept in memory: they are collected now, or they stayed resident
      // under the next job's heap (a 256 MiB sweep's index that wrote 200 MiB to /tmp left the next one, which
      // filled its heap, 14 MiB short of its memory cgroup).
      files.clear();
      fileBytes = droppedBytes = 0;
      globalThis.gc?.();
    }
    if (job.last || !reusable) {
      // No job follows (the parent closes this process): loading another interpreter would only take CPU
      // from the node while it publishes this job's result.
      await readJob();
      process.exit(0);
    }
  }
}

async function makeSnapshot(file) {
  seedEntropy("shoal-pyodide-bootstrap", Buffer.alloc(0));
  const pyodide = await load(undefined, true);
  defineDriver(pyodide); // the driver and its imports (driver.py PRELOAD) are in the snapshot
  fs.writeFileSync(file, pyodide.makeMemorySnapshot());
}

try {
  if (option("--make-snapshot")) await makeSnapshot(option("--make-snapshot"));
  else await serve();
} catch (e) {
  const message = `${e?.stack ?? e}`;
  try {
    control({ event: "error", message });
  } catch {
    // the parent is gone
  }
  writeAll(2, Buffer.from(`shoal pyodide runner: ${message}\n`));
  process.exit(70);
}
