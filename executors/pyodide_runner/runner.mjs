// Runs Python jobs in Pyodide under Node.js, offline and deterministically. Started by executors/pyodide.py.
//
//   node runner.mjs --control-fd N [--snapshot FILE] [--warm-up ROUNDS]
//       warm up (in an interpreter no job uses), then for each job line read from stdin: load a fresh
//       interpreter from the snapshot (held in memory), report "ready", run the job, report "exit"
//   node runner.mjs --make-snapshot FILE
//       load Pyodide the same way and save its memory to FILE
//
// Protocol: jobs arrive on stdin, one JSON line each (see driver.py for the fields), one at a time: the
// next is sent only after the previous one's "exit". The program's stdout and stderr go to this process's
// fd 1 and 2, and nothing else is written there. Control messages are JSON lines on fd N: {"event": "ready"}
// once a fresh interpreter is loaded and waits for a job, then {"event": "exit", "code": C, "stdout": B1,
// "stderr": B2} when the program has finished, B1 and B2 being the bytes it wrote to fd 1 and 2 (so that
// the parent can tell one job's output from the next's); any failure caused by the job, e.g. a broken wheel,
// is reported this way with its message on stderr. A job line with "last": true is the process's last job:
// no interpreter is loaded after it, and the process ends when stdin closes. {"event": "error", "message": M}
// means the runner itself failed; it exits then.
//
// Every job gets an interpreter of its own, loaded from the snapshot just for it and dropped afterwards:
// nothing a job does (module globals, imports, files in its file system, its entropy stream or clock)
// reaches the next one. Only the compiled WebAssembly code and V8's optimisations of it are shared. The
// parent (executors/pyodide.py) sends one process only jobs of one owner.
//
// Determinism: before Pyodide loads, every source of entropy and time it can reach is replaced:
//   * node:crypto randomFillSync/randomBytes/randomUUID and crypto.getRandomValues draw from one AES-CTR
//     stream; seeded with a fixed "bootstrap" key before each interpreter loads, re-seeded from the job's
//     seed just before the program runs (so every job's interpreter is the same, whatever ran before);
//   * Date and performance.now read one virtual clock that advances CLOCK_STEP_MS per read, the wall
//     clock starting at EPOCH_MS; it restarts at zero before each interpreter loads and just before the
//     program runs, and sleeping (time.sleep, asyncio) moves it forward instead of waiting (driver.py);
//   * PYTHONHASHSEED=0, TZ=UTC, LANG=C.UTF-8, a fixed sys.executable;
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
const GC_ABOVE_RSS = 640 * 1024 * 1024; // bytes of resident memory above which old interpreters are collected
const EROFS = 69; // Emscripten errno numbers
const EPERM = 63;

process.env.TZ = "UTC";

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
}

function fill(view) {
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
FakeDate.now = wallNow;
FakeDate.parse = RealDate.parse;
FakeDate.UTC = RealDate.UTC;
globalThis.Date = FakeDate;
Object.defineProperty(performance, "now", { value: tick, configurable: true });

// ---- memory -------------------------------------------------------------------------------------------

// The job's memory limit caps the WebAssembly heap: Emscripten grows it through this method, and when
// growing fails malloc returns NULL and Python raises MemoryError (the same way on every node).
let memoryLimit = Infinity;
let memoryRefused = false;
const realGrow = WebAssembly.Memory.prototype.grow;
WebAssembly.Memory.prototype.grow = function grow(pages) {
  if (this.buffer.byteLength + pages * 65536 > memoryLimit) {
    memoryRefused = true;
    throw new RangeError("the job's memory limit is reached");
  }
  return realGrow.call(this, pages);
};

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
  if (known && Buffer.compare(known[0], bytes) === 0) {
    return { module: known[1], instance: await realInstantiate(known[1], imports) };
  }
  const module = await WebAssembly.compile(bytes);
  compiled.set(bytes.length, [Buffer.from(bytes), module]);
  return { module, instance: await realInstantiate(module, imports) };
};

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

// ---- no network ---------------------------------------------------------------------------------------

globalThis.fetch = async (resource) => {
  throw new TypeError(`network access is disabled for Shoal jobs (fetch ${String(resource)})`);
};

// ---- output -------------------------------------------------------------------------------------------

const pause = new Int32Array(new SharedArrayBuffer(4));

const written = { 1: 0, 2: 0 }; // bytes the current job wrote to fd 1 and 2

function writeAll(fd, bytes) {
  if (fd in written) written[fd] += bytes.length;
  let done = 0;
  while (done < bytes.length) {
    try {
      done += fs.writeSync(fd, bytes, done, bytes.length - done);
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

function control(message) {
  if (controlFd !== null) writeAll(controlFd, Buffer.from(JSON.stringify(message) + "\n"));
}

// ---- file systems -------------------------------------------------------------------------------------

// NODEFS as the job should see it: host metadata that differs between nodes is normalised, listings are
// sorted, and a read-only mount refuses writes.
function jobFS(FS, NODEFS, writable) {
  const fail = (errno) => () => {
    throw new FS.ErrnoError(errno);
  };
  const normalise = (stat) => {
    const time = new RealDate(EPOCH_MS);
    const exec = stat.mode & 0o111 ? 0o111 : 0;
    const kind = stat.mode & 0o170000;
    const perms = kind === 0o040000 ? 0o755 : 0o644 | exec;
    return { ...stat, dev: 1, uid: 0, gid: 0, mode: kind | (writable ? perms : perms & ~0o222),
             atime: time, mtime: time, ctime: time };
  };
  const node_ops = {
    ...NODEFS.node_ops,
    getattr: (node) => normalise(NODEFS.node_ops.getattr(node)),
    lookup: (parent, name) => adopt(NODEFS.node_ops.lookup(parent, name)),
    readdir: (node) => NODEFS.node_ops.readdir(node).sort(),
  };
  const stream_ops = { ...NODEFS.stream_ops, getattr: (stream) => normalise(NODEFS.stream_ops.getattr(stream)) };
  if (writable) {
    node_ops.mknod = (parent, name, mode, dev) => adopt(NODEFS.node_ops.mknod(parent, name, mode, dev));
  } else {
    for (const op of ["mknod", "rename", "unlink", "rmdir", "symlink", "setattr"]) node_ops[op] = fail(EROFS);
    stream_ops.setattr = fail(EROFS);
    stream_ops.write = fail(EROFS);
    stream_ops.msync = fail(EROFS);
    stream_ops.open = (stream) => {
      if (stream.flags & (0o1 | 0o2 | 0o100 | 0o1000 | 0o2000)) throw new FS.ErrnoError(EROFS);
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
  memoryRefused = false;
  const pyodide = await load(snapshot, false);
  return { pyodide, driver: pyodide.pyimport(DRIVER_MODULE) };
}

async function runJob({ pyodide, driver }, job) {
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
      if (job.memory_limit) memoryLimit = job.memory_limit;
    };
    const advance = (ms) => {
      virtualMs += ms;
    };
    code = driver.run_job(JSON.stringify(job), reset, advance);
    if (memoryRefused) {
      const mib = (job.memory_limit / 1048576).toFixed(0);
      writeAll(2, Buffer.from(`memory limit: the program needed more than ${mib} MiB (resources.memory)\n`));
    }
  } catch (e) {
    if (!(e instanceof JobError)) throw e;
    writeAll(2, Buffer.from(`${e.message ?? e}\n`));
    code = 1;
  }
  return code;
}

async function serve() {
  const snapshot = option("--snapshot") ? fs.readFileSync(option("--snapshot")) : undefined;
  const rounds = Number(option("--warm-up") ?? 0);
  if (rounds > 0) {
    // V8 compiles the interpreter's hot paths here, in an interpreter that no job uses: the compiled code
    // is shared by every interpreter this process loads, the warm-up's Python objects are not.
    (await fresh(snapshot)).driver.warm_up(rounds);
  }
  for (;;) {
    // The previous interpreters' memory is freed before the next one takes its own, when it adds up (a full
    // collection costs more than loading an interpreter, so not after every job).
    if (process.memoryUsage.rss() > GC_ABOVE_RSS) globalThis.gc?.();
    let interpreter = await fresh(snapshot);
    control({ event: "ready" });
    const job = await readJob();
    if (job === null) process.exit(0);
    const code = await runJob(interpreter, job);
    interpreter = null;
    control({ event: "exit", code, stdout: written[1], stderr: written[2] });
    if (job.last) {
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
