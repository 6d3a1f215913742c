"""The int8 ONNX embedding runtime: built once and reused, rebuilt when damaged, checked against fp32 at load, and
replaced by torch fp32 whenever it cannot be trusted. The build (seconds) runs once per test session."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.settings import Settings, SettingsError
from knowledge import embedder as embedder_module
from knowledge import onnx_embedder
from knowledge.embedder import packaged_model_path, sentence_transformer_embedder
from knowledge.onnx_embedder import OnnxEmbedder, load_onnx_embedder

REPO = Path(__file__).resolve().parents[2]
MINILM = "all-MiniLM-L6-v2"


def ticket_texts() -> list[str]:
    rows = [json.loads(line) for line in (REPO / "examples" / "resolutions.jsonl").read_text().splitlines()]
    return [f"{row['subject']}\n{row['body']}" for row in rows]


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding one real build of the packaged MiniLM."""
    cache = tmp_path_factory.mktemp("embedding-cache")
    load_onnx_embedder(packaged_model_path(), MINILM, cache)
    return cache


@pytest.fixture(scope="session")
def onnx(built_cache: Path) -> OnnxEmbedder:
    return load_onnx_embedder(packaged_model_path(), MINILM, built_cache)


@pytest.fixture
def cache_copy(built_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the built cache, for tests that damage it."""
    copy = tmp_path / "cache"
    shutil.copytree(built_cache, copy)
    return copy


def build_folder(cache: Path) -> Path:
    (folder,) = [path for path in cache.iterdir() if path.is_dir()]
    return folder


class FakeTorchEmbedder:
    """Stands in for torch fp32 where a test only asks which runtime was chosen."""

    def __init__(self, model: str | None = None) -> None:
        self.name, self.dimension, self.runtime = MINILM, 384, "torch"
        self.fallback_reason: str | None = None


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedder_module, "SentenceTransformerEmbedder", FakeTorchEmbedder)


def test_the_runtime_names_itself_and_gives_unit_rows(onnx: OnnxEmbedder) -> None:
    vectors = onnx.encode(ticket_texts()[:5])

    assert onnx.name == "all-MiniLM-L6-v2+onnx-int8"
    assert onnx.runtime == "onnx-int8"
    assert vectors.shape == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert onnx.encode([]).shape == (0, 384)
    assert onnx.check_cosine >= onnx_embedder.CHECK_COSINE


def test_one_pass_gives_encodes_vectors_and_each_texts_tokens(onnx: OnnxEmbedder) -> None:
    # The reader reads a question by its vector and its tokens: one pass of the model gives both, the same vector
    # `encode` gives (which also runs each text alone).
    texts = [*ticket_texts()[:4], "Where do receipts go?"]
    vectors, rows = onnx.encode_with_tokens(texts)

    np.testing.assert_allclose(vectors, onnx.encode(texts), atol=1e-6)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(onnx.build_dir / onnx_embedder.TOKENIZER_FILE))
    tokenizer.no_padding()
    for text, row in zip(texts, rows, strict=True):
        assert row.ids.tolist() == tokenizer.encode(text).ids[1:-1]  # [CLS] and [SEP] left out
        assert row.vectors.shape == (len(row.ids), 384)
        assert row.continues is not None
        assert row.continues.tolist() == [t.startswith("##") for t in tokenizer.encode(text).tokens[1:-1]]
    assert onnx.encode_with_tokens([])[0].shape == (0, 384)
    [testphase] = onnx.encode_with_tokens(["Testphase"])[1]
    assert testphase.continues is not None and testphase.continues.tolist() == [False, True, True]


def test_vectors_are_within_0_99_of_torch_fp32_on_every_ticket(onnx: OnnxEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ticket_texts()
    model = SentenceTransformer(packaged_model_path(), device="cpu")
    expected = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    cosines = np.sum(onnx.encode(texts) * expected, axis=1)

    assert len(texts) >= 50
    assert float(cosines.min()) >= 0.99, f"worst {cosines.min():.4f} on {texts[int(cosines.argmin())][:60]!r}"


def test_batching_and_concurrent_callers_do_not_change_the_vectors(onnx: OnnxEmbedder) -> None:
    texts = ticket_texts()[:24]
    together = onnx.encode(texts)
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, onnx.encode([texts[n]]))) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for n in range(8):  # int8 scales are per run: a text runs alone, so its neighbours never move its vector
        np.testing.assert_allclose(results[n][0], together[n], atol=1e-6)


def test_a_second_load_reuses_the_build(built_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: Any) -> None:
        raise AssertionError("rebuilt a valid cached build")

    monkeypatch.setattr(onnx_embedder, "build", no_build)
    manifest = (build_folder(built_cache) / onnx_embedder.MANIFEST_FILE).read_text()

    again = load_onnx_embedder(packaged_model_path(), MINILM, built_cache)

    assert again.name == "all-MiniLM-L6-v2+onnx-int8"
    assert (build_folder(built_cache) / onnx_embedder.MANIFEST_FILE).read_text() == manifest


@pytest.mark.parametrize("damage", ["truncated model", "missing reference", "garbage manifest"])
def test_a_damaged_build_is_found_and_rebuilt(damage: str, cache_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_folder(cache_copy)
    pristine = cache_copy.parent / "pristine"
    shutil.copytree(folder, pristine)
    if damage == "truncated model":
        model = folder / onnx_embedder.ONNX_FILE
        model.write_bytes(model.read_bytes()[: 1 << 20])
    elif damage == "missing reference":
        (folder / onnx_embedder.REFERENCE_FILE).unlink()
    else:
        (folder / onnx_embedder.MANIFEST_FILE).write_text("{not json")
    assert onnx_embedder.verify_build(folder) is not None
    builds: list[Path] = []

    def rebuild(source: str, spec: dict[str, Any], target: Path) -> None:  # the real build, minus its seconds
        builds.append(target)
        shutil.rmtree(target)
        shutil.copytree(pristine, target)

    monkeypatch.setattr(onnx_embedder, "build", rebuild)

    loaded = load_onnx_embedder(packaged_model_path(), MINILM, cache_copy)

    assert builds == [folder]
    assert onnx_embedder.verify_build(folder) is None
    assert loaded.encode(["How do I reset my password?"]).shape == (1, 384)


def test_a_build_that_fails_falls_back_to_torch_with_the_reason(
    cache_copy: Path, monkeypatch: pytest.MonkeyPatch, fake_torch: None, caplog: pytest.LogCaptureFixture
) -> None:
    (build_folder(cache_copy) / onnx_embedder.ONNX_FILE).write_bytes(b"not a model")

    def failing_build(*args: Any) -> None:
        raise onnx_embedder.OnnxBuildError("building the onnx-int8 runtime failed: exporter exploded")

    monkeypatch.setattr(onnx_embedder, "build", failing_build)

    chosen = sentence_transformer_embedder(None, "auto", cache_copy)

    assert isinstance(chosen, FakeTorchEmbedder)
    assert chosen.fallback_reason is not None and "exporter exploded" in chosen.fallback_reason
    assert "running torch fp32" in caplog.text


def test_the_load_check_rejects_vectors_that_differ_and_torch_serves(
    cache_copy: Path, monkeypatch: pytest.MonkeyPatch, fake_torch: None, caplog: pytest.LogCaptureFixture
) -> None:
    real_run = OnnxEmbedder._run

    def drifted(self: OnnxEmbedder, feed: dict[str, np.ndarray]) -> np.ndarray:
        hidden = real_run(self, feed)
        return hidden + np.random.default_rng(0).normal(0, 0.3, hidden.shape).astype(np.float32)

    monkeypatch.setattr(OnnxEmbedder, "_run", drifted)

    chosen = sentence_transformer_embedder(None, "onnx-int8", cache_copy)

    assert isinstance(chosen, FakeTorchEmbedder)
    assert chosen.fallback_reason is not None and "differ from fp32: cosine" in chosen.fallback_reason
    assert "onnx-int8 not used" in caplog.text


def test_without_onnxruntime_torch_serves(cache_copy: Path, monkeypatch: pytest.MonkeyPatch, fake_torch: None) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError

    chosen = sentence_transformer_embedder(None, "auto", cache_copy)

    assert isinstance(chosen, FakeTorchEmbedder)
    assert chosen.fallback_reason is not None and "onnxruntime is not installed" in chosen.fallback_reason


def test_auto_picks_the_onnx_runtime_and_torch_never_touches_it(
    built_cache: Path, monkeypatch: pytest.MonkeyPatch, fake_torch: None
) -> None:
    assert sentence_transformer_embedder(None, "auto", built_cache).name == "all-MiniLM-L6-v2+onnx-int8"

    def no_onnx(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the torch runtime loaded the ONNX one")

    monkeypatch.setattr(onnx_embedder, "load_onnx_embedder", no_onnx)
    chosen = sentence_transformer_embedder(None, "torch", built_cache)
    assert isinstance(chosen, FakeTorchEmbedder)
    assert chosen.fallback_reason is None


def test_a_model_the_runtime_cannot_reproduce_is_refused_before_any_build(tmp_path: Path) -> None:
    source = Path(packaged_model_path())
    folder = tmp_path / "cls-pooled"
    for file in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json"):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / file, folder / file)
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))

    with pytest.raises(onnx_embedder.OnnxBuildError, match="mean pooling only"):
        load_onnx_embedder(str(folder), "cls-pooled", tmp_path / "cache")


def test_the_runtime_setting(tmp_path: Path) -> None:
    assert Settings.from_mapping({}).embedding_runtime == "auto"
    assert Settings.from_mapping({}).embedding_cache == Path.home() / ".cache" / "deskpilot" / "embeddings"
    settings = Settings.from_mapping(
        {"DESKPILOT_EMBEDDING_RUNTIME": "ONNX-int8", "DESKPILOT_EMBEDDING_CACHE": str(tmp_path)}
    )
    assert (settings.embedding_runtime, settings.embedding_cache) == ("onnx-int8", tmp_path)
    with pytest.raises(SettingsError, match="DESKPILOT_EMBEDDING_RUNTIME must be one of auto, onnx-int8, torch"):
        Settings.from_mapping({"DESKPILOT_EMBEDDING_RUNTIME": "openvino"})
