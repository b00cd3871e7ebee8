"""The composition root: builds store, broker, engine and HTTP server from one Settings."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
from dataclasses import dataclass

from ojs_amqp.amqp.bounded import BrokerTimeouts
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.amqp.transport import AmqpTransport
from ojs_amqp.clock import now_ms
from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.event_publisher import EventPublisher
from ojs_amqp.engine.events import EventLog
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.http.app import HttpApi
from ojs_amqp.http.server import HttpServer
from ojs_amqp.logs import redact
from ojs_amqp.metrics import Metrics
from ojs_amqp.native.edge import NativeEdge
from ojs_amqp.settings import Settings
from ojs_amqp.store import JobStore, describe, open_store
from ojs_amqp.tls import broker_context, server_context
from ojs_amqp.tracing import create_tracing

log = logging.getLogger("ojs_amqp")

#: Net new container objects between young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a long-running daemon: what exists once
    started (modules, pydantic schemas, topology) is frozen out of every later collection,
    and the young generation is collected every 10,000 new objects rather than every 700.
    Nearly everything a job allocates is freed by reference counting anyway. At the default
    thresholds the collector ran ~22 times a second under load and took 1.93 s of the
    daemon's CPU in one benchmark run, against 0.12 s with these (docs/performance.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def broker_timeouts(settings: Settings) -> BrokerTimeouts:
    return BrokerTimeouts(
        connect_s=settings.amqp_connect_timeout_ms / 1000,
        channel_s=settings.amqp_channel_timeout_ms / 1000,
        declare_s=settings.amqp_declare_timeout_ms / 1000,
        confirm_s=settings.amqp_confirm_timeout_ms / 1000,
        rpc_s=settings.amqp_rpc_timeout_ms / 1000,
    )


def _warn_of_long_broker_waits(settings: Settings) -> None:
    """A push waits for a channel, a declare and a confirm; past the request timeout its
    client may give up before the 503 comes (the defaults keep each well below it)."""
    limit = settings.http_request_timeout_ms
    waits = {
        "--amqp-channel-timeout-ms": settings.amqp_channel_timeout_ms,
        "--amqp-declare-timeout-ms": settings.amqp_declare_timeout_ms,
        "--amqp-confirm-timeout-ms": settings.amqp_confirm_timeout_ms,
    }
    for flag, ms in waits.items():
        if ms >= limit:
            log.warning(
                "%s (%d ms) is not below --http-request-timeout-ms (%d ms): a push to a "
                "stalled broker may be answered after its client gave up", flag, ms, limit,
            )  # fmt: skip


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    broker: Broker
    transport: AmqpTransport
    engine: JobEngine
    cron: CronScheduler
    native: NativeEdge
    events: EventPublisher | None = None
    http: HttpServer | None = None
    api: HttpApi | None = None
    https: ssl.SSLContext | None = None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        store = open_store(settings.store_path)
        name = f"ojs-amqp/{settings.prefix}" if settings.prefix else "ojs-amqp"
        metrics = Metrics()
        tls = broker_context(
            settings.amqp_url, settings.amqp_ca_file, settings.amqp_cert_file,
            settings.amqp_key_file,
        )  # fmt: skip
        broker = Broker(
            settings.amqp_url, Topology(settings.prefix), connection_name=name, observer=metrics,
            ssl_context=tls, timeouts=broker_timeouts(settings),
        )  # fmt: skip
        transport = AmqpTransport(broker, settings.prefetch, metrics.background_failed)
        engine = JobEngine(settings, store, transport, EventLog(), metrics,
                           tracing=create_tracing())  # fmt: skip
        https = server_context(settings.tls_cert_file, settings.tls_key_file)
        cron = CronScheduler(engine, store, transport, clock=now_ms)
        native = NativeEdge(engine, broker, metrics)
        return cls(settings, store, broker, transport, engine, cron, native, https=https)

    async def start(self) -> None:
        _warn_of_long_broker_waits(self.settings)
        await self.store.open()
        await self.broker.start(attempts=self.settings.connect_attempts)
        await self.engine.start()
        await self.native.start()
        await self.cron.start()
        if self.settings.events_exchange:
            self.events = EventPublisher(self.engine.events, self.transport)
            self.events.start()
        api = self.api = HttpApi(self.engine, self.cron, self.settings)
        self.http = HttpServer(
            api.handle,
            max_body_bytes=self.settings.max_body_bytes,
            error_response=api.refused,
            request_timeout_s=self.settings.http_request_timeout_ms / 1000,
            max_connections=self.settings.http_max_connections,
        )
        await self.http.start(
            self.settings.http_host.strip("[]"), self.settings.http_port, self.https
        )
        log.info(
            "ojs-amqp listening on %s://%s, broker %s (RabbitMQ %s), store %s%s",
            self.settings.http_scheme,
            self.settings.http_address,
            redact(self.settings.amqp_url),
            self.broker.server_version,
            describe(self.settings.store_path),
            " [TEST MODE: /ojs/v1/admin/reset is enabled]" if self.settings.test_mode else "",
        )

    async def drain(self) -> None:
        """SIGTERM's first step: /ready answers 503 from now on; still serving everything
        else for `shutdown_delay_ms`, so probes notice before the port closes."""
        if self.api is not None:
            self.api.draining = True
        if self.settings.shutdown_delay_ms > 0:
            log.info("draining: /ready answers 503; stopping in %d ms",
                     self.settings.shutdown_delay_ms)  # fmt: skip
            await asyncio.sleep(self.settings.shutdown_delay_ms / 1000)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.events is not None:
            await self.events.close()
        await self.cron.close()
        await self.engine.close()
        await self.broker.close()
        await self.store.close()


async def serve(settings: Settings) -> None:
    runtime = Runtime.build(settings)
    await runtime.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting at once")
            os._exit(130)  # leased and held messages return to their queues on disconnect
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
        await runtime.drain()
        log.info("shutting down: no new requests; unconfirmed pushes are flushed, leased and "
                 "waiting jobs stay with the broker (a second signal forces)")  # fmt: skip
    finally:
        await runtime.stop()
