"""The application: settings, the active handlers and the services they share, assembled once.

Runtimes build one :class:`App` at start-up (``App.from_env()`` reads and validates the
configuration, loads the plugins and calls each handler's ``setup``) and ask it for a
:class:`~qldbstream.pipeline.batch.Pipeline`. Code that wants to assemble its own app passes handlers
and services directly::

    app = App(Settings(dlq="dir:./dlq"), handlers=[router])
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qldbstream.api.handler import Handler, SetupContext
from qldbstream.api.metrics import Metrics
from qldbstream.app.config import Settings, dimension_pairs, load_settings
from qldbstream.app.plugins import load_handlers
from qldbstream.core.dedupe import DedupeStore
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.gate_store import GateStore
from qldbstream.core.masking import Masker
from qldbstream.core.masking_dlq import Sealer
from qldbstream.core.masking_text import MaskingMetrics
from qldbstream.io.anchors import load_anchors
from qldbstream.io.aws_errors import is_transient
from qldbstream.io.clients import aws_client
from qldbstream.io.dlq import DirectoryDeadLetterQueue, SqsDeadLetterQueue
from qldbstream.io.logs import configure_logging
from qldbstream.io.masking_logs import MaskingLogFilter, install_log_masking, remove_log_masking
from qldbstream.io.metrics import build_metrics
from qldbstream.io.sealers import AesGcmSealer, masking_from_settings
from qldbstream.io.tracing import span
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore

__all__ = ["App", "NoDeadLetterQueue"]

log = logging.getLogger("qldbstream.app")


class NoDeadLetterQueue:
    """No DLQ configured: dead-lettering fails, so a poison record halts its shard (nothing lost)."""

    def put(self, letter: DeadLetter) -> None:
        raise ConfigurationError(
            f"no dead-letter queue is configured (QLDBSTREAM_DLQ), so {letter.position.describe()} "
            "cannot be set aside: the shard stops here"
        )

    def receive(self, limit: int = 10) -> Any:
        return iter(())

    def delete(self, handle: str) -> None:
        pass


class App:
    def __init__(
        self,
        settings: Settings | None = None,
        handlers: Sequence[Handler] | None = None,
        *,
        dlq: DeadLetterQueue | None = None,
        store: DedupeStore | None = None,
        metrics: Metrics | None = None,
        clients: Callable[[str], Any] | None = None,
        gate_store: GateStore | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._client_factory = clients
        if metrics is None:  # every runtime honours metrics_namespace and metrics_dimensions
            metrics = build_metrics(
                self.settings.metrics,
                self.settings.metrics_namespace,
                dimension_pairs(self.settings.metrics_dimensions),
            )
        self.metrics = metrics
        self.handlers = (
            list(handlers)
            if handlers is not None
            else load_handlers(self.settings.handlers, self.settings.handler_settings)
        )
        if not self.handlers:
            log.warning("no handlers are active: records are verified and checkpointed, nothing else")
        self.dlq = dlq if dlq is not None else self._build_dlq()
        self.store = store if store is not None else self._build_store()
        self.gate_store = gate_store if gate_store is not None else self._build_gate_store()
        #: chain-confirmed: blocks a saved digest's proof confirms (checked here, at start-up)
        anchors = self.settings.chain_anchors
        self.anchors = load_anchors(anchors) if anchors else {}
        self.masker, self.sealer = self._build_masking()
        if self.masker is not None:  # no metric dimension carries a masked field's value
            self.metrics = MaskingMetrics(self.metrics, self.masker)
        self._log_filter: MaskingLogFilter | None = None
        self._setup_done = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, config_file: str | None = None, **kwargs: Any
    ) -> App:
        """The app a runtime runs: configuration from the environment/file, logging configured."""
        settings = load_settings(environ, config_file)
        configure_logging(settings.log_level, settings.log_format)
        from qldbstream.core import native

        log.info(
            "hot path: %s",
            "compiled (qldbstream-native)"
            if native.available()
            else "pure Python (qldbstream-native is not installed or does not load: "
            "pip install 'qldbstream[native]' for the compiled one)",
        )
        return cls(settings, **kwargs)

    # --- AWS clients ---------------------------------------------------------------------
    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` honouring the configured region, endpoints and retry
        configuration (:mod:`qldbstream.io.clients`)."""
        if self._client_factory is not None:
            return self._client_factory(service)
        return aws_client(
            service,
            region_name=self.settings.region,
            endpoint_url=self.settings.endpoint(service),
            max_attempts=self.settings.aws_max_attempts,
        )

    def _build_dlq(self) -> DeadLetterQueue:
        spec = self.settings.dlq
        if not spec:
            return NoDeadLetterQueue()
        if spec.startswith("dir:"):
            return DirectoryDeadLetterQueue(spec[4:])
        url = spec[4:] if spec.startswith("sqs:") else spec
        return SqsDeadLetterQueue(
            self.client("sqs"),
            url,
            payload_bucket=self.settings.dlq_payload_bucket,
            s3=lambda: self.client("s3"),
        )

    def _build_store(self) -> DedupeStore:
        spec = self.settings.dedupe_store
        if spec == "memory":
            return InMemoryDedupeStore(ttl=self.settings.dedupe_ttl_seconds, clock=time.time)
        from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore

        store = DynamoDBDedupeStore(
            self.client("dynamodb"), spec.split(":", 1)[1], ttl=self.settings.dedupe_ttl_seconds
        )
        store.check()  # a missing table or a wrong key schema fails here, at start-up
        return store

    def warn_if_stores_in_memory(self, runtime: str) -> None:
        """Lambda and the KCL run one shard per process: in memory, a revision whose block summary
        another process reads waits until the maximum wait and is dead-lettered, and de-duplication
        and late flags hold within one process only - say so at start."""
        if not self.gate_store.durable:
            log.warning(
                "%s with gate_store = memory: a revision whose block summary is read by another "
                "process (no KPL aggregation) waits in this process only and is dead-lettered after "
                "gate_max_wait_seconds; set gate_store = dynamodb:<table> (docs/delivery.md)",
                runtime,
            )
        if not getattr(self.store, "shared", False):
            log.warning(
                "%s with dedupe_store = memory: de-duplication and late-version flags hold within this "
                "process only - another process may deliver a copy again, or a document's older version "
                "after a newer one without ctx.late; set dedupe_store = dynamodb:<table> (docs/delivery.md)",
                runtime,
            )

    def _build_gate_store(self) -> GateStore:
        spec = self.settings.gate_store
        if spec == "memory":
            return InMemoryGateStore()
        from qldbstream.io.gate_dynamodb import DynamoDBGateStore

        store = DynamoDBGateStore(self.client("dynamodb"), spec.split(":", 1)[1])
        store.check()  # a missing table or a wrong key schema fails here, at start-up
        return store

    def _build_masking(self) -> tuple[Masker | None, Sealer | None]:
        s = self.settings
        if not s.masking:
            return None, None
        masker, sealer = masking_from_settings(
            s.masking_rules,
            s.masking_hash_key,
            s.masking_dlq_key,
            s.masking_dlq_kms_key_id,
            kms_client=lambda: self.client("kms"),
        )
        if sealer is None:  # no DLQ (validated): nothing is ever stored, so a throw-away key will do
            sealer = AesGcmSealer(os.urandom(32), "ephemeral")
        return masker, sealer

    # --- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        if self._setup_done:
            return
        if self.masker is not None:  # every log record, of every logger, is masked when created
            self._log_filter = install_log_masking(self.masker)
        for handler in self.handlers:
            own = self.settings.handler_settings.get(handler.name, {})
            handler.setup(
                SetupContext(dict(own), logging.getLogger(f"qldbstream.handler.{handler.name}"), self.metrics)
            )
        self._setup_done = True

    def pipeline(
        self,
        *,
        allow_hold: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        journal_order: bool = False,
    ) -> Pipeline:
        """The app's pipeline. ``journal_order``: a runtime that reads every shard in this process
        (the standalone worker) asks for it; the ``order`` setting can still say ``shard``."""
        self.setup()
        return Pipeline(
            self.handlers,
            dlq=self.dlq,
            store=self.store,
            settings=self.settings.pipeline_settings(),
            metrics=self.metrics,
            clock=clock,
            wall_clock=time.time,
            sleep=sleep,
            allow_hold=allow_hold,
            masker=self.masker,
            sealer=self.sealer,
            gate_store=self.gate_store,
            journal_order=journal_order and self.settings.order == "journal",
            anchors=self.anchors,
            tracer=span,
            transient=is_transient,
        )

    def close(self) -> None:
        if self._log_filter is not None:
            remove_log_masking(self._log_filter)
            self._log_filter = None
        for handler in self.handlers:
            try:
                handler.close()
            except Exception:  # closing must reach every handler; the error is logged
                log.exception("closing handler %s failed", handler.name)
