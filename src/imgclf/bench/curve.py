"""Accuracy against training time: what each benchmarked pipeline records at its evaluation points."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Point:
    train_seconds: float  # training time only: evaluation time is excluded
    images: int  # training images seen so far
    test_accuracy: float


@dataclass
class Curve:
    name: str
    points: list[Point] = field(default_factory=list)

    def add(self, train_seconds: float, images: int, test_accuracy: float) -> None:
        self.points.append(Point(train_seconds, images, test_accuracy))

    def time_to(self, accuracy: float) -> float | None:
        """Training seconds until the first evaluation at or above `accuracy`; None if never reached."""
        return next((p.train_seconds for p in self.points if p.test_accuracy >= accuracy), None)

    @property
    def best_accuracy(self) -> float:
        return max((p.test_accuracy for p in self.points), default=0.0)

    def images_per_second(self) -> float:
        last = self.points[-1] if self.points else None
        return last.images / last.train_seconds if last and last.train_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "images_per_second": self.images_per_second(),
                "points": [asdict(p) for p in self.points]}
