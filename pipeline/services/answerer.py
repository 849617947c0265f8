"""What an answer backend returns for one question: a typed outcome.

``answered``  the backend produced an answer (``answer`` non-blank)
``skipped``   the backend declined: too short, not a question, off-topic, irrelevant material
``vetoed``    an answer was produced and then withdrawn (irrelevant answer, safety check)
``failed``    the backend or something behind it failed (web search, 500s after retries)
``refused``   the LLM provider's content filter refused the prompt (``state`` quotes it): final

``state`` is the backend's own last state (HuixiangDou's human-readable string),
the thing users count to tune their knowledge base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["Answerer", "Kind", "Outcome"]

Kind = Literal["answered", "skipped", "vetoed", "failed", "refused"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    answer: str = ""
    refs: tuple[str, ...] = ()
    state: str = ""
    server: str = ""
    attempts: int = 1
    seconds: float = 0.0


class Answerer(Protocol):
    """The seam between the QA graph and an answer backend (HuixiangDou or local)."""

    # Which backend this is ("huixiangdou" or "local"): every answer row records it.
    backend: str
    # How many questions it works on at once: the graph runs one answer worker per slot.
    slots: int

    async def probe(self) -> str:
        """Check readiness; return a short description of what will answer.
        Raise :class:`pipeline.errors.ServersDown` when nothing can."""

    async def ask(self, question: str) -> Outcome:
        """Answer one question. Raise ServiceError subclasses only for what the
        run must react to (quota, fatal, every server down: a
        :class:`pipeline.errors.ServersDown` says how long to wait)."""

    def stats(self) -> dict[str, dict[str, Any]]:
        """Live counters per server (URL) for the progress display; {} when
        there are no servers to show. Cheap: called every progress tick."""

    async def aclose(self) -> None:
        """Release connections."""
