"""Every message of the shared corpora through `mail2ticket ingest`: one outcome each, nothing lost, no crash."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mail2ticket.db.engine import make_engine, make_sessionmaker, unit_of_work
from mail2ticket.db.models import InboundMessage, RawMessage
from mail2ticket.ingress.files import iter_path
from tests.support.app import App
from tests.support.corpus import CORPORA_ROOT, corpus_dir, iter_messages
from tests.test_loops import on_tmpfs


@pytest.fixture
def bulk_app(app: App) -> Iterator[App]:
    with on_tmpfs(app) as bulk:
        yield bulk


@pytest.mark.corpus
@pytest.mark.slow
def test_whole_corpus_ends_in_exactly_one_outcome_each(bulk_app: App, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """Each corpus message becomes a ticket/article, or is ignored or quarantined with a reason; exports are exact."""
    corpus_dir()
    app = bulk_app
    app.write_config()
    paths = [str(p) for p in iter_messages(CORPORA_ROOT)]
    inputs = {item.origin: item.data for path in paths for item in iter_path(Path(path))}
    assert app.run_inprocess("ingest", "--json", *paths) in (0, 65)  # 65: a few corpus files are empty
    sys.stdout.flush()
    entries = json.loads(capfdbinary.readouterr().out)
    stored = {e["origin"]: e for e in entries}
    empty = {origin for origin, data in inputs.items() if not data.strip()}
    assert set(stored) | empty == set(inputs)

    engine = make_engine(app.database_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            rows = {r.id: r for r in session.scalars(select(InboundMessage))}
            raw = {i: bytes(d) for i, d in session.execute(select(RawMessage.inbound_id, RawMessage.data))}
    finally:
        engine.dispose()
    for origin, entry in stored.items():
        row = rows[entry["inbound_id"]]
        assert row.state in ("done", "ignored", "quarantined"), origin
        if row.state == "done":
            assert row.ticket_id is not None, origin
        else:
            assert row.reason, origin
        if not entry["duplicate"]:
            assert raw[row.id] == inputs[origin], origin  # the exact bytes are kept

    quarantined = [r for r in rows.values() if r.state == "quarantined"]
    assert quarantined
    for row in quarantined:
        assert app.run_inprocess("quarantine", "export", str(row.id)) == 0
        assert capfdbinary.readouterr().out == raw[row.id]
    states = [r.state for r in rows.values()]
    assert states.count("done") > 200 and states.count("ignored") > 500
