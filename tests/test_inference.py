"""`MicroBatcher`: concurrent one-text requests share batches, each caller gets its own answer or the error."""

from __future__ import annotations

import threading
import time

from ft_plugin.inference import MicroBatcher


class SlowClassifier:
    """Echoes the text length; 50 ms a batch, so concurrent callers queue; 'boom' fails its whole batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, float]]:
        self.batches.append(list(texts))
        time.sleep(0.05)
        if "boom" in texts:
            raise RuntimeError("out of memory")
        return [{"length": float(len(text))} for text in texts]


def ask_concurrently(batcher: MicroBatcher, texts: list[str]) -> list:
    answers: list = [None] * len(texts)

    def ask(i: int) -> None:
        try:
            answers[i] = batcher.predict(texts[i], timeout=10)
        except RuntimeError as error:
            answers[i] = error

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return answers


def test_concurrent_requests_are_batched_up_to_the_limit_and_each_gets_its_answer():
    classifier = SlowClassifier()
    batcher = MicroBatcher(classifier, max_batch_size=8)
    texts = ["x" * n for n in range(1, 21)]
    answers = ask_concurrently(batcher, texts)
    assert answers == [{"length": float(n)} for n in range(1, 21)]
    sizes = [len(batch) for batch in classifier.batches]
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) < 20
    batcher.close()


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_works():
    classifier = SlowClassifier()
    batcher = MicroBatcher(classifier)
    assert batcher.predict("first") == {"length": 5.0}  # alone: runs at once
    answers = ask_concurrently(batcher, ["boom"])
    assert isinstance(answers[0], RuntimeError) and "out of memory" in str(answers[0])
    assert batcher.predict("after") == {"length": 5.0}
    batcher.close()  # e.g. evicted from the Space's model cache while a request still holds it
    assert batcher.predict("closed", timeout=1) == {"length": 6.0}  # answered in the caller's thread, no hang
