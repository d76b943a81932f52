"""Question-text baselines and features: what the words of a VQA question alone predict.

``question_logreg`` answers from the question only (TF-IDF of word uni- and bigrams, logistic
regression), the floor an image model must beat. :class:`QuestionFeatures` gives the same kind of
features as a dense matrix, for a probe that joins them to image features.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from medfm.evaluate.classical.base import CLASSICAL, Classical
from medfm.evaluate.tasks.base import TaskData

# Inverse regularisation strength, chosen on the VQA-RAD validation part (carved from its training split).
QUESTION_C = 3.0


def question_vectorizer(max_features: int | None = None) -> TfidfVectorizer:
    """TF-IDF of lower-cased word uni- and bigrams with sub-linear term frequency."""
    return TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=max_features)


def question_texts(data: TaskData) -> np.ndarray:
    """The questions as a 1-D object array (the vectorizer inside the pipeline turns them into numbers)."""
    return np.array([str(q) for q in data.inputs["question"]], dtype=object)


def question_logreg(seed: int):
    return make_pipeline(
        question_vectorizer(), LogisticRegression(max_iter=1000, C=QUESTION_C, random_state=seed)
    )


CLASSICAL.register(
    "question_logreg",
    Classical(
        features=question_texts,
        estimator=question_logreg,
        description="Logistic regression on TF-IDF word uni- and bigrams of the question alone",
    ),
)


class QuestionFeatures:
    """Dense TF-IDF features of questions, fitted on the training questions only.

    >>> features = QuestionFeatures().fit(["is this a ct?", "is there a fracture?"])
    >>> features.transform(["is this an mri?"]).shape[0]
    1
    """

    def __init__(self, max_features: int = 2000):
        self.vectorizer = question_vectorizer(max_features)

    def fit(self, train_questions: list[str]) -> QuestionFeatures:
        self.vectorizer.fit([str(q) for q in train_questions])
        return self

    def transform(self, questions: list[str]) -> np.ndarray:
        """float32 ``[N, F]`` with F at most ``max_features``."""
        matrix = self.vectorizer.transform([str(q) for q in questions])
        return matrix.toarray().astype(np.float32)
