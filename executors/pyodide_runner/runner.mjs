// Runs ONE Python job in Pyodide under Node.js, offline and deterministically. Started by executors/pyodide.py.
//
//   node runner.mjs --control-fd N [--snapshot FILE] [--warm-up ROUNDS]
//       load Pyodide (from the snapshot), warm it up, report "ready", then run the job read from stdin
//   node runner.mjs --make-snapshot FILE
//       load Pyodide the same way and save its memory to FILE
//
// Protocol: the job arrives on stdin as one JSON line (see driver.py for its fields). The program's stdout
// and stderr go to this process's fd 1 and 2, and nothing else is written there. Control messages are JSON
// lines on fd N: {"event": "ready"} once Pyodide is loaded, then {"event": "exit", "code": C} when the
// program has finished (any failure caused by the job, e.g. a broken wheel, is reported this way with
// its message on stderr), or {"event": "error", "message": M} when the runner itself failed.
//
// Determinism: before Pyodide loads, every source of entropy and time it can reach is replaced:
//   * node:crypto randomFillSync/randomBytes/randomUUID and crypto.getRandomValues draw from one AES-CTR
//     stream; seeded with a fixed "bootstrap" key while loading, re-seeded from the job's seed just
//     before the program runs (so a pre-started interpreter behaves exactly like a fresh one);
//   * Date and performance.now read one virtual clock that advances CLOCK_STEP_MS per read, the wall
//     clock starting at EPOCH_MS; it restarts at zero just before the program runs, and sleeping (time.sleep,
//     asyncio) moves it forward instead of waiting (driver.py);
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
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PYODIDE_DIR = path.join(HERE, "node_modules", "pyodide") + path.sep;
const EPOCH_MS = 1_704_067_200_000; // 2024-01-01T00:00:00Z, as executors/_common.py EPOCH_SECONDS
const CLOCK_STEP_MS = 1; // as executors/_common.py CLOCK_STEP_NS
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

// ---- no network ---------------------------------------------------------------------------------------

globalThis.fetch = async (resource) => {
  throw new TypeError(`network access is disabled for Shoal jobs (fetch ${String(resource)})`);
};

// ---- output -------------------------------------------------------------------------------------------

const pause = new Int32Array(new SharedArrayBuffer(4));

function writeAll(fd, bytes) {
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
    ...(snapshot ? { _loadSnapshot: fs.readFileSync(snapshot) } : {}),
  });
}

async function readJob() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
    const text = Buffer.concat(chunks).toString("utf8");
    const nl = text.indexOf("\n");
    if (nl >= 0) return JSON.parse(text.slice(0, nl));
  }
  return null; // stdin closed without a job: the parent no longer needs this interpreter
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

function loadDriver(pyodide) {
  const namespace = pyodide.globals.get("dict")();
  pyodide.runPython(fs.readFileSync(path.join(HERE, "driver.py"), "utf8"), {
    globals: namespace,
    filename: "<shoal-runner>",
  });
  return namespace;
}

async function serve() {
  seedEntropy("shoal-pyodide-bootstrap", Buffer.alloc(0));
  const snapshot = option("--snapshot");
  const pyodide = await load(snapshot, false);
  const driver = loadDriver(pyodide);
  driver.get("warm_up")(Number(option("--warm-up") ?? 0));
  control({ event: "ready" });

  const job = await readJob();
  if (job === null) process.exit(0);
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
    code = driver.get("run_job")(JSON.stringify(job), reset, advance);
    if (memoryRefused) {
      const mib = (job.memory_limit / 1048576).toFixed(0);
      writeAll(2, Buffer.from(`memory limit: the program needed more than ${mib} MiB (resources.memory)\n`));
    }
  } catch (e) {
    if (!(e instanceof JobError)) throw e;
    writeAll(2, Buffer.from(`${e.message ?? e}\n`));
    code = 1;
  }
  control({ event: "exit", code });
  process.exit(0);
}

async function makeSnapshot(file) {
  seedEntropy("shoal-pyodide-bootstrap", Buffer.alloc(0));
  const pyodide = await load(undefined, true);
  loadDriver(pyodide).destroy(); // its imports (driver.py PRELOAD) are in the snapshot
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
