"""Database schema: typed SQLAlchemy 2 models for every stage's durable state.

The state between pipeline stages lives here, never in memory: intake rows (`inbound_message` with the raw
bytes in `raw_message`), tickets with their articles, participants and attachments, the transactional
outbox, the audit trail, IMAP cursors and pending server actions, and leases for several instances.
All SQL lives in `db.repo`; services never commit (the orchestrator owns the transaction).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class InboundState(enum.StrEnum):
    NEW = "new"
    DONE = "done"
    IGNORED = "ignored"
    QUARANTINED = "quarantined"


class OutboundState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class ActionState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


def _enum(e: type[enum.StrEnum]) -> String:
    return String(max(len(m.value) for m in e) + 4)


class InboundMessage(Base):
    """One received message as it arrived: the unit that intake makes durable before any acknowledgement."""

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint("source_key"),
        UniqueConstraint("dedupe_scope", "content_hash"),
        Index("ix_inbound_message_state_id", "state", "id"),
        Index("ix_inbound_message_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str | None] = mapped_column(String(400))
    dedupe_scope: Mapped[str] = mapped_column(String(100))
    mailbox: Mapped[str | None] = mapped_column(String(100))
    envelope_from: Mapped[str | None] = mapped_column(String(400))
    envelope_to: Mapped[list[str]] = mapped_column(default=list)
    peer: Mapped[str | None] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[InboundState] = mapped_column(_enum(InboundState), default=InboundState.NEW)
    reason: Mapped[str | None] = mapped_column(Text)
    defects: Mapped[list[str]] = mapped_column(default=list)
    classification: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[dt.datetime | None] = mapped_column()
    archive: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claim_expires_at: Mapped[dt.datetime | None] = mapped_column()
    processed_at: Mapped[dt.datetime | None] = mapped_column()
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id", ondelete="SET NULL"))

    raw: Mapped[RawMessage | None] = relationship(lazy="raise", cascade="all, delete-orphan", passive_deletes=True)


class RawMessage(Base):
    """The exact bytes of an inbound message, kept apart so listings never load them."""

    __tablename__ = "raw_message"

    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_message.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TicketCounter(Base):
    """Per-year sequence for public ticket numbers; incremented under a row lock."""

    __tablename__ = "ticket_counter"

    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(default=0)


class Ticket(Base):
    __tablename__ = "ticket"
    __table_args__ = (
        UniqueConstraint("number"),
        Index("ix_ticket_queue_status", "queue", "status"),
        Index("ix_ticket_requester", "requester"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    number: Mapped[str] = mapped_column(String(40))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="new")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    category: Mapped[str | None] = mapped_column(String(100))
    tags: Mapped[list[str]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(String(1000))
    requester: Mapped[str | None] = mapped_column(String(320))
    requester_name: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(8), default="de")
    assignee: Mapped[str | None] = mapped_column(String(320))
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column()


class Article(Base):
    """One message of a ticket's conversation, inbound or outbound."""

    __tablename__ = "article"
    __table_args__ = (Index("ix_article_message_id", "message_id"), Index("ix_article_ticket_id", "ticket_id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id", ondelete="CASCADE"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id", ondelete="SET NULL"))
    direction: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(16), default="mail")
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    sender: Mapped[str | None] = mapped_column(String(320))
    sender_name: Mapped[str | None] = mapped_column(String(200))
    recipients: Mapped[list[str]] = mapped_column(default=list)
    message_id: Mapped[str | None] = mapped_column(String(998))
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    thread_index: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(1000), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    new_text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AttachmentContent(Base):
    """Attachment bytes, stored once per sha256."""

    __tablename__ = "attachment_content"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachment"
    __table_args__ = (Index("ix_attachment_article_id", "article_id"), Index("ix_attachment_sha256", "sha256"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("article.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("attachment_content.sha256"))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)


class Participant(Base):
    """Who takes part in a ticket; only participants get status mails."""

    __tablename__ = "participant"
    __table_args__ = (UniqueConstraint("ticket_id", "address"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))


class OutboundMail(Base):
    """The transactional outbox: one pre-rendered mail to one recipient, written with the event that causes it."""

    __tablename__ = "outbound_mail"
    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        UniqueConstraint("message_id"),
        Index("ix_outbound_mail_state_next", "state", "next_attempt_at"),
        Index("ix_outbound_mail_recipient_created", "recipient", "created_at"),
        Index("ix_outbound_mail_ticket_id", "ticket_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id", ondelete="CASCADE"))
    article_id: Mapped[int | None] = mapped_column(ForeignKey("article.id", ondelete="SET NULL"))
    template: Mapped[str] = mapped_column(String(64))
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    recipient: Mapped[str] = mapped_column(String(320))
    envelope_from: Mapped[str] = mapped_column(String(400), default="")
    message_id: Mapped[str] = mapped_column(String(998))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[OutboundState] = mapped_column(_enum(OutboundState), default=OutboundState.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claim_expires_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column()


class Event(Base):
    """Audit trail: what happened to a ticket or a message, by whom and how."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_ticket_id", "ticket_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id", ondelete="CASCADE"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id", ondelete="SET NULL"))
    type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(320))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MailboxState(Base):
    """IMAP cursor per (mailbox, folder): UIDVALIDITY and the highest UID ingested."""

    __tablename__ = "mailbox_state"
    __table_args__ = (UniqueConstraint("mailbox", "folder"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(100))
    folder: Mapped[str] = mapped_column(String(400))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ImapAction(Base):
    """A server-side change (flag, move, delete) planned in the intake transaction and replayed until done."""

    __tablename__ = "imap_action"
    __table_args__ = (
        UniqueConstraint("mailbox", "folder", "uidvalidity", "uid"),
        Index("ix_imap_action_state", "mailbox", "state"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id", ondelete="SET NULL"))
    mailbox: Mapped[str] = mapped_column(String(100))
    folder: Mapped[str] = mapped_column(String(400))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str | None] = mapped_column(String(998))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(420))
    state: Mapped[ActionState] = mapped_column(_enum(ActionState), default=ActionState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column()


class Lease(Base):
    """A named lease (e.g. 'mailbox:bauamt:INBOX') held by one daemon instance until it expires."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(String(400), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[dt.datetime] = mapped_column()
