"""An asyncio face on confluent-kafka's idempotent ``acks=all`` producer.

``await DurableProducer.send(...)`` returns only once the broker has acknowledged the write to
all in-sync replicas; anything else raises :class:`KafkaWriteError`. Connectors answer their
sender after this await, never before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, Producer

from stafet.errors import KafkaWriteError
from stafet.kafka.client import PARTITIONER, KafkaTarget, resolve_config

Headers = Sequence[tuple[str, bytes]]


class DurableProducer:
    """Idempotent producer with a poll thread that resolves one future per record."""

    def __init__(self, kafka: KafkaTarget, *, timeout_s: float = 10.0, **extra: object) -> None:
        """``kafka``: settings (this process's principal and security), or a client config."""
        self._timeout_s = timeout_s
        self._producer = Producer(
            resolve_config(
                kafka,
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "partitioner": PARTITIONER,
                    "linger.ms": 2,
                    "message.timeout.ms": int(timeout_s * 1000),
                    "message.max.bytes": 2_000_000,
                    "compression.type": "lz4",
                    **extra,
                },
            )
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[int, int]:
        """Write one record durably; return (partition, offset)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                outcome: object = KafkaWriteError(f"Kafka did not store the record: {err.str()}")
            else:
                outcome = (msg.partition(), msg.offset())
            loop.call_soon_threadsafe(_settle, future, outcome)

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), on_delivery=delivered
            )
        except BufferError as exc:
            raise KafkaWriteError("the producer queue is full") from exc
        except Exception as exc:  # KafkaException, e.g. message too large
            raise KafkaWriteError(f"Kafka refused the record: {exc}") from exc
        try:
            return await asyncio.wait_for(future, self._timeout_s + 5.0)
        except TimeoutError as exc:
            raise KafkaWriteError("no acknowledgement from Kafka in time") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued, then stop the poll thread (once; a second call does nothing)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._poller.join()
        self._producer.flush(timeout_s)
        del self._producer  # destroy the handle now: no reconnect attempts after close


def _settle(future: asyncio.Future[tuple[int, int]], outcome: object) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)  # type: ignore[arg-type]
