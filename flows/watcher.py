"""The data-set watcher: fingerprint each source; on a change, emit ``covid.dataset.updated``.

The event is emitted from the flow process (not from a task on a Dask worker, where it can
be lost when a temporary cluster shuts down); a deployment trigger turns it into a
``covid-benchmark`` run. The new fingerprint is stored only after the event went out.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from covid_pipeline import fingerprint as fp
from covid_pipeline.sources import parse_source
from flows import credentials
from tasks.retries import RETRY

EVENT = "covid.dataset.updated"


@task(name="fingerprint", **RETRY, cache_policy=NO_CACHE)
def fingerprint_source(source: str, out: str) -> dict:
    """The source's current fingerprint and whether it differs from the stored one."""
    spec = parse_source(source)
    now = fp.fingerprint(spec)
    before = fp.previous(out, spec)
    return {"now": now.as_dict(), "changed": before is None or before.digest != now.digest,
            "before": before.digest if before else None}


@flow(name="dataset-watcher", log_prints=True)
def dataset_watcher(sources: list[str], out: str, credentials_block: str | None = None
                    ) -> list[str]:
    """Emit one ``covid.dataset.updated`` event when any source changed; return them.

    ``credentials_block``: object-storage credentials (see flows/credentials.py).
    """
    logger = get_run_logger()
    credentials.apply_block(credentials_block)
    checks = {s: fingerprint_source(s, out) for s in sources}
    changed = [s for s, c in checks.items() if c["changed"]]
    if not changed:
        logger.info("no source changed")
        return []
    digest = "-".join(checks[s]["now"]["digest"][:12] for s in sources)
    event = emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"covid.dataset.{digest}",
                  "prefect.resource.name": ", ".join(changed)},
        payload={"sources": sources, "changed": changed, "out": out,
                 "fingerprints": {s: c["now"]["digest"] for s, c in checks.items()}},
    )
    if event is None:
        raise RuntimeError(f"could not emit {EVENT}; the fingerprints were not stored")
    for s in changed:
        fp.remember(out, parse_source(s), fp.Fingerprint(**checks[s]["now"]))
    logger.info("emitted %s (%s) for %s", EVENT, event.id, ", ".join(changed))
    return changed
