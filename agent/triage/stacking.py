"""A stacked text classifier learned from labelled history: word and character TF-IDF linear SVMs, a linear SVM
and a k-nearest-neighbour vote over sentence embeddings, and optional hand-written priors, combined by one weight
per model (plus a bias per class) fitted on out-of-fold scores, so the mix adapts to each data set.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import csr_matrix
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.svm import LinearSVC

log = logging.getLogger(__name__)

# Scores of a prior for a batch of texts: (n, len(classes)) columns in the classifier's class order.
Prior = Callable[[Sequence[str], Sequence[str]], np.ndarray]

KNN_K = 10
# Sharpness of the neighbour vote: exp(T * (similarity - best similarity)).
KNN_TEMPERATURE = 20.0
KNN_FLOOR = 1e-3
MIN_EXAMPLES = 8


def logsumexp(z: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    top = z.max(axis=axis, keepdims=True)
    out = np.log(np.exp(z - top).sum(axis=axis, keepdims=True)) + top
    return np.asarray(out if keepdims else np.squeeze(out, axis=axis))


def _svm(c: float) -> LinearSVC:
    return LinearSVC(C=c, max_iter=5000)


def _decision(model: LinearSVC, x: object, classes: np.ndarray) -> np.ndarray:
    """SVM scores as (n, len(classes)), whatever subset of classes the model saw; unseen classes score -2."""
    # The linear score itself: sklearn's decision_function re-validates its input, a large share of the
    # per-ticket cost at one query at a time.
    raw = np.asarray(x @ model.coef_.T, dtype=np.float64) + model.intercept_
    if raw.shape[1] == 1:
        raw = raw[:, 0]
    seen = np.asarray(model.classes_)
    if raw.ndim == 1:  # binary: one margin, positive for seen[1]
        raw = np.stack([-raw / 2, raw / 2], axis=1)
    out = np.full((raw.shape[0], len(classes)), -2.0)
    out[:, np.searchsorted(classes, seen)] = raw
    return out


def knn_scores(
    sims: np.ndarray, labels: np.ndarray, n_classes: int, k: int = KNN_K, weights: np.ndarray | None = None
) -> np.ndarray:
    """Log of a similarity-weighted vote of the k nearest labelled examples; `labels` are class indices,
    `weights` scale each example's vote (default 1)."""
    n, m = sims.shape
    out = np.full((n, n_classes), np.log(KNN_FLOOR))
    if m == 0:
        return out
    k = min(k, m)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    rows = np.arange(n)[:, None]
    top_sims = sims[rows, top]
    votes_of = np.exp(KNN_TEMPERATURE * (top_sims - top_sims.max(axis=1, keepdims=True)))
    if weights is not None:
        votes_of = votes_of * weights[top]
    votes = np.zeros((n, n_classes))
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[top].ravel()), votes_of.ravel())
    votes /= votes.sum(axis=1, keepdims=True)
    result: np.ndarray = np.log(votes + KNN_FLOOR)
    return result


def _fit_tied_weights(
    blocks: list[np.ndarray], y: np.ndarray, n_classes: int, l2: float = 1e-2, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One weight per model and a bias per class minimising the (weighted) multinomial log loss of
    sum_m w_m * s_m + b."""
    stacked = np.stack(blocks)  # (M, n, C)
    n_models, n = stacked.shape[0], stacked.shape[1]
    rows = np.arange(n)
    share = None if sample_weight is None else sample_weight / sample_weight.sum()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:n_models], theta[n_models:]
        z = np.tensordot(w, stacked, 1) + b
        lse = logsumexp(z, axis=1)
        per_example = lse - z[rows, y]
        value = float((per_example.mean() if share is None else per_example @ share) + l2 * (b @ b))
        grad_z = np.exp(z - lse[:, None])
        grad_z[rows, y] -= 1.0
        if share is None:
            grad_z /= n
        else:
            grad_z *= share[:, None]
        grad_w = np.einsum("mnc,nc->m", stacked, grad_z)
        grad_b = grad_z.sum(axis=0) + 2 * l2 * b
        return value, np.concatenate([grad_w, grad_b])

    start = np.concatenate([np.ones(n_models), np.zeros(n_classes)])
    # Non-negative model weights: a model that does not help gets 0, never an inverted vote.
    bounds = [(0.0, None)] * n_models + [(None, None)] * n_classes
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return result.x[:n_models], result.x[n_models:]


@dataclass
class _Tfidf:
    """A fitted `TfidfVectorizer`'s transform (l2 norm, optionally sublinear tf) for a few texts at a time.

    The same rows as `vectorizer.transform`, which spends more on validating its input and building the matrix
    than on the counting when it gets one ticket at a time (both vectorizers, a ticket-length text: 2.1 ms there,
    0.9 ms here)."""

    analyze: Callable[[str], list[str]]
    vocabulary: dict[str, int]
    idf: np.ndarray
    sublinear: bool

    @classmethod
    def of(cls, vectorizer: TfidfVectorizer) -> _Tfidf:
        if vectorizer.norm != "l2" or not vectorizer.use_idf or vectorizer.binary:
            raise ValueError("only l2-normalised, idf-weighted counts are supported")
        idf = np.asarray(vectorizer.idf_, dtype=np.float64)
        return cls(vectorizer.build_analyzer(), vectorizer.vocabulary_, idf, bool(vectorizer.sublinear_tf))

    def transform(self, texts: Sequence[str]) -> csr_matrix:
        indptr, indices, data = [0], [], []
        for text in texts:
            counts = Counter(map(self.vocabulary.get, self.analyze(text)))
            counts.pop(None, None)
            columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            order = np.argsort(columns)
            columns = columns[order]
            weights = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))[order]
            if self.sublinear:
                weights = np.log(weights) + 1.0
            weights *= self.idf[columns]
            norm = np.sqrt(weights @ weights)
            if norm > 0:
                weights /= norm
            indices.append(columns)
            data.append(weights)
            indptr.append(indptr[-1] + len(columns))
        return csr_matrix(
            (
                np.concatenate(data).astype(np.float32) if data else np.zeros(0, np.float32),
                np.concatenate(indices) if indices else np.zeros(0, np.int64),
                np.asarray(indptr),
            ),
            shape=(len(texts), len(self.idf)),
        )


@dataclass
class TextFeatures:
    """Word (1-2 gram) and character (3-5 gram) TF-IDF, fitted once and shared by every head."""

    word: TfidfVectorizer
    char: TfidfVectorizer
    _word: _Tfidf = field(init=False, repr=False)
    _char: _Tfidf = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._word, self._char = _Tfidf.of(self.word), _Tfidf.of(self.char)

    @classmethod
    def fit(cls, texts: Sequence[str]) -> tuple[TextFeatures, Any, Any]:
        """The vectorizers and the matrices of `texts` (vocabulary and idf are unsupervised: no label leaks)."""
        small = len(texts) < 500
        word = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, min_df=1 if small else 2, max_features=200_000, dtype=np.float32
        )
        char = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(3, 5),
            sublinear_tf=True,
            min_df=1 if small else 3,
            max_features=50_000,
            dtype=np.float32,
        )
        x_word, x_char = word.fit_transform(list(texts)), char.fit_transform(list(texts))
        return cls(word, char), x_word, x_char

    def transform(self, texts: Sequence[str]) -> tuple[csr_matrix, csr_matrix]:
        return self._word.transform(texts), self._char.transform(texts)


@dataclass
class StackedClassifier:
    """Fitted models and their combination; `predict` takes the query's similarities to `train_embeddings`."""

    classes: np.ndarray
    features: TextFeatures
    word_svm: LinearSVC
    char_svm: LinearSVC
    embedding_svm: LinearSVC
    train_labels: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    model_names: tuple[str, ...]
    prior: Prior | None = None
    n_train: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    # Per-example weights of the neighbour vote (None: every example counts once).
    train_weights: np.ndarray | None = None

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        embeddings: np.ndarray,
        labels: Sequence[str],
        *,
        prior: Prior | None = None,
        folds: int = 5,
        seed: int = 0,
        features: TextFeatures | None = None,
        matrices: tuple[Any, Any] | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> StackedClassifier | None:
        """Fit on labelled examples; None when there is too little to learn from (fewer than two classes).

        `features` and `matrices` (word and char TF-IDF rows of exactly these texts) share one vectorizer
        between several classifiers of the same history. `sample_weight` weighs examples in every model and in
        the combination (None: all 1)."""
        y_names = np.asarray(labels, dtype=object).astype(str)
        classes, y = np.unique(y_names, return_inverse=True)
        if len(classes) < 2 or len(y) < MIN_EXAMPLES:
            return None
        text_list = list(texts)
        if features is None or matrices is None:
            features, x_word, x_char = TextFeatures.fit(text_list)
        else:
            x_word, x_char = matrices
        emb = np.asarray(embeddings, dtype=np.float32)
        sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        model_names: tuple[str, ...] = ("word", "char", "embedding", "neighbours") + (("prior",) if prior else ())
        prior_scores = prior(text_list, list(classes)) if prior else None

        counts = np.bincount(y, minlength=len(classes))
        n_folds = max(2, min(folds, len(y) // 4))
        splitter: StratifiedKFold | KFold
        if counts.min() >= n_folds:
            splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        else:
            splitter = KFold(n_folds, shuffle=True, random_state=seed)
        oof = [np.zeros((len(y), len(classes))) for _ in model_names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for train, test in splitter.split(np.zeros(len(y)), y):
                if len(np.unique(y[train])) < 2:
                    continue
                fold_weight = None if sw is None else sw[train]
                blocks = cls._base(
                    _svm(0.5).fit(x_word[train], y[train], sample_weight=fold_weight),
                    _svm(0.5).fit(x_char[train], y[train], sample_weight=fold_weight),
                    _svm(1.0).fit(emb[train], y[train], sample_weight=fold_weight),
                    x_word[test],
                    x_char[test],
                    emb[test],
                    emb[test] @ emb[train].T,
                    y[train],
                    len(classes),
                    fold_weight,
                )
                for i, block in enumerate(blocks):
                    oof[i][test] = block
                if prior_scores is not None:
                    oof[-1][test] = prior_scores[test]
            weights, bias = _fit_tied_weights(oof, y, len(classes), sample_weight=sw)
            word_svm = _svm(0.5).fit(x_word, y, sample_weight=sw)
            char_svm = _svm(0.5).fit(x_char, y, sample_weight=sw)
            embedding_svm = _svm(1.0).fit(emb, y, sample_weight=sw)
        return cls(
            classes=classes,
            features=features,
            word_svm=word_svm,
            char_svm=char_svm,
            embedding_svm=embedding_svm,
            train_labels=y,
            weights=weights,
            bias=bias,
            model_names=model_names,
            prior=prior,
            n_train=len(y),
            class_counts={str(c): int(n) for c, n in zip(classes, counts, strict=True)},
            train_weights=sw,
        )

    @staticmethod
    def _base(
        word_svm: LinearSVC,
        char_svm: LinearSVC,
        embedding_svm: LinearSVC,
        x_word: object,
        x_char: object,
        emb: np.ndarray,
        sims: np.ndarray,
        train_labels: np.ndarray,
        n_classes: int,
        train_weights: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        classes = np.arange(n_classes)
        return [
            _decision(word_svm, x_word, classes),
            _decision(char_svm, x_char, classes),
            _decision(embedding_svm, emb, classes),
            knn_scores(sims, train_labels, n_classes, weights=train_weights),
        ]

    def predict(
        self,
        texts: Sequence[str],
        embeddings: np.ndarray,
        sims: np.ndarray,
        matrices: tuple[Any, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Class probabilities (n, C) and each model's own softmax-normalised view, for the decision's reasons.

        `sims` are the queries' cosine similarities to the training examples (rows of the history the
        classifier was fitted on, in the same order).
        """
        text_list = list(texts)
        blocks = self._base(
            self.word_svm,
            self.char_svm,
            self.embedding_svm,
            *(matrices if matrices is not None else self.features.transform(text_list)),
            np.asarray(embeddings, dtype=np.float32),
            sims,
            self.train_labels,
            len(self.classes),
            self.train_weights,
        )
        if self.prior is not None:
            blocks.append(self.prior(text_list, list(self.classes)))
        z = np.tensordot(self.weights, np.stack(blocks), 1) + self.bias
        probs = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        views = {}
        for name, weight, block in zip(self.model_names, self.weights, blocks, strict=True):
            scaled = max(float(weight), 1e-6) * block
            views[name] = np.exp(scaled - logsumexp(scaled, axis=1, keepdims=True))
        return probs, views

    def describe(self) -> dict[str, object]:
        return {
            "classes": len(self.classes),
            "examples": self.n_train,
            "weights": {n: round(float(w), 3) for n, w in zip(self.model_names, self.weights, strict=True)},
        }
