"""Bring your own model: a scikit-learn classifier served by dtesn-trio.

    pip install 'dtesn-trio[sklearn]'
    dtesn-trio serve --engine examples.sklearn_digits:factory --set engine.c=0.5
    curl -s localhost:8000/v1/process -d '{"input": [0,0,5,13,9,1,0,0, ...64 pixels]}'

The engine is a plain class with the three methods of the engine protocol
(``dtesn_trio.engine``): ``decode`` one request's input (an 8 x 8 image, flattened: 64
pixel values from 0 to 16), ``process_batch`` many of them with one ``predict_proba``
call, ``encode`` one output as JSON.  The classifier is trained at start-up on
scikit-learn's own digits data set (1,797 images; 80 % for training); the rest is kept
to check it (``statistics().test_accuracy``).  Everything else -- admission, priorities,
deadlines, batching, the cache, durable jobs, ``/metrics``, OpenAPI -- is the runtime's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from dtesn_trio.errors import InvalidRequest

__all__ = ["DigitsEngine", "DigitsStatistics", "factory", "samples"]

PIXELS = 64
Pixels = Annotated[
    list[Annotated[float, msgspec.Meta(ge=0, le=16)]],
    msgspec.Meta(min_length=PIXELS, max_length=PIXELS, description="8 x 8 pixels, 0-16"),
]


@dataclass(frozen=True)
class DigitsStatistics:
    train_size: int
    test_accuracy: float


class DigitsEngine:
    """Logistic regression on scikit-learn's digits, behind the engine protocol."""

    input_type: Any = Pixels
    output_schema: dict[str, Any] = {  # noqa: RUF012 (read only)
        "type": "object",
        "properties": {
            "digit": {"type": "integer", "minimum": 0, "maximum": 9},
            "probabilities": {"type": "array", "items": {"type": "number"}},
        },
    }

    def __init__(self, *, c: float = 1.0, max_iter: int = 2000, seed: int = 0) -> None:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=0.2, random_state=seed, stratify=y
        )
        self.model = LogisticRegression(C=c, max_iter=max_iter).fit(x_train, y_train)
        self._stats = DigitsStatistics(len(x_train), float(self.model.score(x_test, y_test)))
        self._version = f"digits-logreg:c={c}:seed={seed}:".encode()

    def decode(self, payload: Any) -> npt.NDArray[np.float64]:
        """64 pixels (0-16) as a float vector."""
        try:
            pixels = np.asarray(payload, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidRequest("input must be 64 numbers", field="input") from None
        if pixels.shape != (PIXELS,) or not np.all((pixels >= 0) & (pixels <= 16)):
            raise InvalidRequest("input must be 64 pixel values from 0 to 16", field="input")
        return pixels

    def process_batch(
        self, items: Sequence[npt.NDArray[np.float64]]
    ) -> list[npt.NDArray[np.float64]]:
        return list(self.model.predict_proba(np.stack(items)))

    def encode(self, output: npt.NDArray[np.float64]) -> dict[str, Any]:
        return {"digit": int(np.argmax(output)), "probabilities": np.round(output, 6).tolist()}

    def cache_key(self, item: npt.NDArray[np.float64]) -> bytes:
        return self._version + item.tobytes()

    def statistics(self) -> DigitsStatistics:
        return self._stats


def factory(**options: Any) -> DigitsEngine:
    """``dtesn-trio serve --engine examples.sklearn_digits:factory``; ``--set
    engine.c=0.5`` (and ``max_iter``, ``seed``) reach the constructor."""
    return DigitsEngine(**options)


def samples(n: int = 8) -> tuple[list[list[float]], list[int]]:
    """``n`` images of the data set (as request inputs) and their labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return [row.tolist() for row in x[:n]], [int(v) for v in y[:n]]


if __name__ == "__main__":
    engine = factory()
    images, labels = samples(5)
    outputs = engine.process_batch([engine.decode(i) for i in images])
    print("test accuracy:", round(engine.statistics().test_accuracy, 3))
    print("labels:", labels, "predicted:", [engine.encode(o)["digit"] for o in outputs])
